// NOT BUILT HERE: an illustration for an Android app using onnxruntime-genai's Kotlin/Java API.
// Gradle: implementation("com.microsoft.onnxruntime:onnxruntime-genai-android:<version>")
package org.edgelm.example

import ai.onnxruntime.genai.Generator
import ai.onnxruntime.genai.GeneratorParams
import ai.onnxruntime.genai.Model
import ai.onnxruntime.genai.Tokenizer

/** Streams a reply from an edgelm ONNX bundle unpacked to [bundleDir] (holds genai_config.json). */
class EdgelmChat(bundleDir: String) : AutoCloseable {
    private val model = Model(bundleDir)
    private val tokenizer = Tokenizer(model)

    fun reply(prompt: String, maxLength: Int = 256, onText: (String) -> Unit) {
        val stream = tokenizer.createStream()
        GeneratorParams(model).use { params ->
            params.setSearchOption("max_length", maxLength.toDouble())
            Generator(model, params).use { generator ->
                generator.appendTokenSequences(tokenizer.encode(prompt))
                while (!generator.isDone) {
                    generator.generateNextToken()
                    onText(stream.decode(generator.getLastTokenInSequence(0)))
                }
            }
        }
    }

    override fun close() {
        tokenizer.close()
        model.close()
    }
}
