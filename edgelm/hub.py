"""Hub ids (`ORG/NAME[@REVISION]`) through huggingface_hub, and what is known of published checkpoints.

huggingface_hub does the resolving: its cache (HF_HOME, HF_HUB_CACHE), HF_HUB_OFFLINE, revisions,
progress bars. edgelm asks only for data files — config, weights, tokenizer — never code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .constants import TOKENIZER_FILES
from .errors import UserError
from .fileio import refuse_long_names, refuse_non_utf8

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")
# a revision: a 40-hex commit, or a branch or tag name as git allows one (components that do not start with a
# dot, no '..', no '.lock' ending; the hub's 'refs/pr/N' included): never a path that leaves refs/ or snapshots/
REVISION_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
DATA_FILES = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json", *TOKENIZER_FILES]
PICKLE_FILES = ["pytorch_model.bin", "pytorch_model.bin.index.json"]
# huggingface_hub's cache layout: HF_HUB_CACHE/models--ORG--NAME/snapshots/<commit>/
CACHE_FOLDER = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")

# Facts about checkpoints as published that their files do not state. Consulted when the model
# comes by hub id or from a hub cache folder; keys compare case-insensitively, as the hub does.
KNOWN_CHECKPOINTS: dict[str, dict[str, str]] = {
    # AntNLP's base NoPE model: a plain LlamaForCausalLM config, no scale_param tensors; the authors'
    # code switches rotary off by patching transformers (Wang et al. 2024, "Length Generalization of
    # Causal Transformers without Position Encoding")
    "antnlp/tinyllama-nope-1.1b": {"position_encoding": "none"},
    "tinyllama/tinyllama_v1.1": {"position_encoding": "rope"},
    "tinyllama/tinyllama-1.1b-chat-v1.0": {"position_encoding": "rope"},
    "tinyllama/tinyllama-1.1b-intermediate-step-1431k-3t": {"position_encoding": "rope"},
    # SmolLM2 (Allal et al. 2025): a plain LlamaForCausalLM config with rope_theta and no rope_scaling, trained with
    # rotary; a random-weight copy of its layout could not be told by measurement (stranger 55)
    **{f"huggingfacetb/smollm2-{size}{kind}": {"position_encoding": "rope"} for size in ("135m", "360m", "1.7b")
       for kind in ("", "-instruct")},
}


def is_hub_id(text: str) -> bool:
    # os.path.exists, not Path.exists: a 4,100-byte `ORG/NAME@REVISION` raised ENAMETOOLONG there (stranger 44)
    return HUB_ID.match(text) is not None and not os.path.exists(text)


def _shown(text: str) -> str:
    """A name from the command line, quoted, cut at 60 characters (a 4,100-byte revision filled the terminal)."""
    return repr(text[:60]) + ("…" if len(text) > 60 else "")


def output_stem(model: Path) -> Path:
    """What an export's default output is named after: the model folder, or for a hub id a name in the current
    folder (its repository's), never a path inside the Hugging Face cache."""
    return Path.cwd() / HUB_ID.match(str(model))["repo"].split("/")[1] if is_hub_id(str(model)) else model.resolve()


def _looks_local(repo: str) -> bool:
    """A missing path that reads as ORG/NAME: its first part is a folder here (`build/model.gguf`), or
    its name ends as the files edgelm opens do."""
    first, _, name = repo.partition("/")
    return Path(first).is_dir() or name.lower().endswith((".gguf", ".zip", ".onnx", ".json", ".safetensors"))


def hub_id_of(folder: Path) -> str | None:
    """ORG/NAME for a folder inside huggingface_hub's cache, else None."""
    parts = folder.resolve().parts
    for i in range(len(parts) - 2):
        found = CACHE_FOLDER.match(parts[i])
        if found and parts[i + 1] == "snapshots":
            return f"{found['org']}/{found['name']}"
    return None


def known_facts(folder: Path) -> tuple[str, dict[str, str]] | None:
    """(ORG/NAME, facts) for a hub cache folder of a checkpoint in KNOWN_CHECKPOINTS."""
    repo = hub_id_of(folder)
    if repo is None:
        return None
    facts = KNOWN_CHECKPOINTS.get(repo.lower())
    return (repo, facts) if facts else None


def is_revision(text: str) -> bool:
    parts = text.split("/")
    return bool(COMMIT.match(text)) or (len(text) <= 255 and all(REVISION_PART.match(p) and not p.endswith(".lock") for p in parts)
                                        and ".." not in text)


def _repo_cache(repo: str) -> Path:
    """huggingface_hub's cache folder for a model repo: HF_HUB_CACHE/models--ORG--NAME."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")


def _refuse_links_below(storage: Path, relative: str) -> None:
    """No part of `relative` under the repo's cache folder may be a symbolic link: huggingface_hub makes
    links only from a snapshot's files into blobs/, never of refs/, snapshots/ or a commit's folder."""
    path = storage
    for part in Path(relative).parts:
        path = path / part
        if os.path.islink(path):
            raise UserError(f"the Hugging Face cache's {path.relative_to(storage)} is a link to {os.path.realpath(path)}", storage,
                            "refused: huggingface_hub makes no such link; delete this repo's cache folder and download it again")


def _check_ref(repo: str, revision: str) -> None:
    """Before huggingface_hub reads refs/<revision> (as it does offline or when the hub cannot be reached:
    a plain open and read whole), it must be what huggingface_hub writes there: a regular file, no link,
    holding a 40-hex commit. A link to /etc/shadow, a FIFO (the open hangs), /dev/zero (the read never
    ends) or '../../x' is refused here, before anything is opened outside the cache."""
    from .artifact_files import read_bytes

    storage = _repo_cache(repo)
    ref = storage / "refs" / revision
    if not os.path.lexists(ref):
        return  # huggingface_hub finds no ref: its own error, or the download
    _refuse_links_below(storage, f"refs/{revision}")
    content = read_bytes(ref, 64, f"the cache's refs/{revision}")
    if not COMMIT.match(content.decode("ascii", "replace")):
        raise UserError(f"the Hugging Face cache's refs/{revision} holds {content[:64]!r}, not a commit", ref,
                        "refused: delete this repo's cache folder and download it again")


def _inside_cache(folder: Path, repo: str) -> Path:
    """The snapshot huggingface_hub answered must be snapshots/<40-hex commit> of the repo's own cache
    folder, reached without a link: a refs/<branch> file holding '../../x', or snapshots/ linked elsewhere,
    would make it any folder on the disk."""
    storage = _repo_cache(repo)
    name = Path(folder).name
    real = Path(os.path.realpath(folder))
    if not COMMIT.match(name) or real != Path(os.path.realpath(storage)) / "snapshots" / name:
        raise UserError(f"the Hugging Face cache resolves {repo} to {real}, outside its snapshots folder", storage,
                        "refused: the cache's refs/ files were changed; delete this repo's cache folder and download it again")
    return folder


def resolve_model(text: str | Path, allow_pickle: bool = False) -> Path:
    """A local path as it is; a hub id → its snapshot folder in the Hugging Face cache, downloaded
    (data files only) unless offline."""
    if not is_hub_id(str(text)):
        refuse_non_utf8(Path(text), "model")
        refuse_long_names(Path(text), "model")
        return Path(text)
    found = HUB_ID.match(str(text))
    repo, revision = found["repo"], found["revision"]
    if revision is not None and not is_revision(revision):
        raise UserError(f"{_shown(revision)} is not a branch, tag or commit name", None,
                        "give ORG/NAME@REVISION with a branch or tag name (main, v1.0, refs/pr/1) or a 40-hex commit")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    from huggingface_hub.utils import validate_repo_id

    try:  # huggingface_hub's own rules (a name of 97 characters was its traceback, raised in the cache's path)
        validate_repo_id(repo)
    except HFValidationError:
        raise UserError(f"not a valid hub id {_shown(repo)} (huggingface_hub takes letters, digits, '-', '_' and '.', at most 96 "
                        "characters, and no '--' or '..')", None, "give ORG/NAME[@REVISION] or a local folder") from None
    patterns = DATA_FILES + (PICKLE_FILES if allow_pickle else [])
    if not COMMIT.match(revision or ""):
        _check_ref(repo, revision or "main")
    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except RevisionNotFoundError:
        raise UserError(f"the hub has no revision {revision!r} of {repo}", None, "give a branch, tag or commit that exists") from None
    except GatedRepoError:
        raise UserError(f"{repo} is gated on the hub", None, "accept its terms on huggingface.co and log in with `hf auth login`") from None
    except RepositoryNotFoundError:
        raise UserError(f"no model {repo} on the hub (or it is private)", None, "check the id, or log in with `hf auth login`") from None
    except LocalEntryNotFoundError:
        if _looks_local(repo):
            raise UserError("no such file or folder (nor a model of that name in the Hugging Face cache)", Path(text),
                            "check the path") from None
        # a mistyped path reads as a hub id too: both are said (a stranger's `nonexistent/path` got advice about the hub only)
        raise UserError(
            f"no file or folder {text}, and {repo}{'@' + revision if revision else ''} is not in the Hugging Face cache "
            "(the hub could not be reached)", None, "check the path; a hub model is downloaded once online (with HF_HUB_OFFLINE unset)",
        ) from None
    except HFValidationError as exc:
        raise UserError(f"not a valid hub id {text!r} ({exc})", None, "give ORG/NAME[@REVISION] or a local folder") from None
    except (HfHubHTTPError, OSError) as exc:  # the hub's other answers, network and disk errors
        answer = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot fetch {repo} from the hub ({answer})", None, "check the connection, or give a local folder") from None
    folder = _inside_cache(folder, repo)
    if not allow_pickle and not any(folder.glob("*.safetensors")):
        raise UserError(f"{repo} has no safetensors weights", folder,
                        "if it publishes only pytorch_model.bin, pass --allow-pickle (loaded with torch.load(weights_only=True))")
    return folder
