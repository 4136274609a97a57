"""Tokenization in batches with all cores, and the choice between a fast (Rust) tokenizer and SentencePiece.

A tokenizer directory may hold `tokenizer.json` (fast), `tokenizer.model` (SentencePiece), or both.
Converting a SentencePiece model to fast form can change ids: the Llama-2 conversion splits runs of
spaces differently. So when a SentencePiece model is present, the fast tokenizer (shipped, or converted
here) is compared with it on whitespace probes and a sample of the data. It is used only if every id
matches; otherwise SentencePiece itself encodes (multi-threaded; about as fast on this data). The
choice and the reason are recorded in the shard manifest; perplexity and lm-eval encode with the same
backend (`hf_loading.load_tokenizer`).

Each document is packed as [BOS] ids EOS, BOS only when the tokenizer adds it by default
(`hf_loading.adds_bos`): the same start of document perplexity and lm-eval use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cpt_pipeline.fetch import local_dir
from cpt_pipeline.hf_loading import adds_bos, load_tokenizer

log = logging.getLogger(__name__)

PROBES = (
    "hello  world",
    "  two leading spaces",
    "x   \n  y",
    " leading",
    "trailing  ",
    "a\tb\t\tc",
    "many     spaces    between",
    "new\n\n\nlines\n",
    "ünïcödé text 日本語 テキスト",
    "numbers 12345 and 3.14159",
    "<s> literal </s> tags",
    "emoji 🙂 and symbols ∑∫√",
    "",
)
EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>")


class TokenizerError(ValueError):
    """The tokenizer cannot be used (missing files, no EOS token)."""


@dataclass(frozen=True)
class TokenizerInfo:
    """What the manifest records about the tokenizer."""

    uri: str
    backend: str
    vocab_size: int
    eos_id: int
    fingerprint: str
    fast_checked: str
    bos_id: int | None = None  # prepended to every document when the tokenizer adds BOS

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "dtype": self.dtype}

    @classmethod
    def from_json(cls, recorded: dict[str, Any]) -> TokenizerInfo:
        return cls(**{k: v for k, v in recorded.items() if k != "dtype"})

    @property
    def dtype(self) -> str:
        return "uint16" if self.vocab_size <= 65536 else "uint32"


def _fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer.model"):
        path = directory / name
        if path.exists():
            digest.update(name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


def files_digest(directory: Path, label: str, trust_remote_code: bool) -> str:
    """A digest of everything TokenizerInfo is made from except the data sample (which decides only the
    backend): the tokenizer files, any code beside them, the uri@revision and the remote-code flag. Equal
    digests let the reduce reuse the info a worker recorded instead of loading transformers again."""
    digest = hashlib.sha256(f"{label}|{trust_remote_code}".encode())
    for path in sorted([*(directory / n for n in TOKENIZER_FILES), *directory.glob("*.py")]):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def resolve_tokenizer_dir(uri: str, revision: str | None = None) -> Path:
    """A local directory holding the tokenizer files of uri (at a hub revision, if given)."""
    try:
        return local_dir(uri, TOKENIZER_FILES, revision)
    except FileNotFoundError as error:
        raise TokenizerError(f"tokenizer {uri!r}: {error}") from error


class TextTokenizer:
    """Encodes batches of documents to id lists with the chosen backend."""

    def __init__(
        self,
        uri: str,
        sample: list[str] | None = None,
        threads: int | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self.directory = resolve_tokenizer_dir(uri, revision)
        self.trust_remote_code = trust_remote_code
        # Rust threads follow RAYON_NUM_THREADS; SentencePiece gets the same per-worker share.
        self.threads = threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count() or 1
        fast_path, sp_path = self.directory / "tokenizer.json", self.directory / "tokenizer.model"
        if not fast_path.exists() and not sp_path.exists():
            raise TokenizerError(f"tokenizer {uri!r}: neither tokenizer.json nor tokenizer.model in {self.directory}")
        self._fast = self._load_fast(fast_path, sp_path)
        self._sp = None
        checked = "no SentencePiece model to compare with"
        if sp_path.exists():
            import sentencepiece

            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_path))
            checked = self._compare(list(PROBES) + list(sample or []))
        backend = (
            "fast"
            if self._fast is not None and (self._sp is None or checked.startswith("ids match"))
            else ("sentencepiece")
        )
        if backend == "sentencepiece":
            self._fast = None
        vocab = self._sp.get_piece_size() if self._sp is not None else self._fast.get_vocab_size()
        label = f"{uri}@{revision}" if revision else uri
        packed = load_tokenizer(self.directory, trust_remote_code, sentencepiece=backend == "sentencepiece")
        bos = int(packed.bos_token_id) if adds_bos(packed) else None
        self.info = TokenizerInfo(
            label, backend, int(vocab), self._eos_id(), _fingerprint(self.directory), checked, bos
        )

    def _load_fast(self, fast_path: Path, sp_path: Path) -> Any:
        import tokenizers

        if fast_path.exists():
            return tokenizers.Tokenizer.from_file(str(fast_path))
        try:  # SentencePiece only: convert with transformers, then verify like a shipped one
            return load_tokenizer(self.directory, self.trust_remote_code).backend_tokenizer
        except Exception as error:  # conversion unsupported for this model: SentencePiece will encode
            log.warning("could not convert %s to a fast tokenizer (%s); using SentencePiece", sp_path, error)
            return None

    def _compare(self, texts: list[str]) -> str:
        if self._fast is None:
            return "no fast tokenizer: SentencePiece encodes"
        fast = [e.ids for e in self._fast.encode_batch(texts, add_special_tokens=False)]
        slow = self._sp.encode(texts)
        differ = [t for t, a, b in zip(texts, fast, slow, strict=True) if a != b]
        if not differ:
            return f"ids match SentencePiece on {len(texts)} texts"
        log.warning(
            "fast tokenizer ids differ from SentencePiece on %d of %d texts (e.g. %r): using SentencePiece",
            len(differ),
            len(texts),
            differ[0][:60],
        )
        return f"ids differ from SentencePiece on {len(differ)} of {len(texts)} texts (e.g. {differ[0][:40]!r})"

    def _eos_id(self) -> int:
        """The EOS tokenizer_config.json names, else the SentencePiece model's, else a conventional one."""
        config_path = self.directory / "tokenizer_config.json"
        eos = json.loads(config_path.read_text()).get("eos_token") if config_path.exists() else None
        named = (eos.get("content") if isinstance(eos, dict) else eos) or None
        token_id = self._token_id(named) if named else None
        if token_id is not None:
            return token_id
        if self._sp is not None and self._sp.eos_id() >= 0:
            return int(self._sp.eos_id())
        names = [*([named] if named else []), *EOS_CANDIDATES]
        for name in EOS_CANDIDATES:
            token_id = self._token_id(name)
            if token_id is not None:
                return token_id
        raise TokenizerError(f"tokenizer in {self.directory}: no EOS token found (tried {names})")

    def _token_id(self, token: str) -> int | None:
        if self._fast is not None:
            return self._fast.token_to_id(token)
        if self._sp is not None:
            piece = self._sp.piece_to_id(token)
            return None if piece == self._sp.unk_id() and token != self._sp.id_to_piece(piece) else int(piece)
        return None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text as it is packed: BOS first when the tokenizer adds it, no EOS."""
        if self._fast is not None:
            encoded = [e.ids for e in self._fast.encode_batch(texts, add_special_tokens=False)]
        else:
            encoded = self._sp.encode(texts, num_threads=self.threads)
        bos = self.info.bos_id
        return encoded if bos is None else [[bos, *ids] for ids in encoded]
