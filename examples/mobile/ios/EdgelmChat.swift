// NOT BUILT HERE: an illustration for an iOS app using llama.cpp's C API from Swift
// (add llama.cpp's Swift package; see its examples/llama.swiftui for a complete app).
import Foundation
import llama

/// Greedy continuation from an edgelm GGUF bundle's .gguf file.
final class EdgelmChat {
    private let model: OpaquePointer
    private let context: OpaquePointer
    private let vocab: OpaquePointer

    init(ggufPath: String, contextLength: UInt32 = 2048) throws {
        llama_backend_init()
        guard let model = llama_model_load_from_file(ggufPath, llama_model_default_params()) else {
            throw NSError(domain: "edgelm", code: 1, userInfo: [NSLocalizedDescriptionKey: "cannot load \(ggufPath)"])
        }
        var params = llama_context_default_params()
        params.n_ctx = contextLength
        self.model = model
        self.context = llama_init_from_model(model, params)
        self.vocab = llama_model_get_vocab(model)
    }

    func reply(_ prompt: String, maxTokens: Int = 128, onText: (String) -> Void) {
        var tokens = [llama_token](repeating: 0, count: prompt.utf8.count + 8)
        let n = llama_tokenize(vocab, prompt, Int32(prompt.utf8.count), &tokens, Int32(tokens.count), true, false)
        tokens = Array(tokens.prefix(Int(n)))
        let sampler = llama_sampler_init_greedy()
        defer { llama_sampler_free(sampler) }
        var batch = llama_batch_get_one(&tokens, Int32(tokens.count))
        for _ in 0..<maxTokens {
            guard llama_decode(context, batch) == 0 else { return }
            var token = llama_sampler_sample(sampler, context, -1)
            if llama_vocab_is_eog(vocab, token) { return }
            var piece = [CChar](repeating: 0, count: 64)
            let length = llama_token_to_piece(vocab, token, &piece, 64, 0, false)
            onText(String(decoding: piece.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self))
            batch = llama_batch_get_one(&token, 1)
        }
    }

    deinit {
        llama_free(context)
        llama_model_free(model)
    }
}
