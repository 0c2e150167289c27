"""Text encoders: the packaged MiniLM loads offline and gives per-token embeddings with a mask, cached
per prompt and independent of batching; "" works; bad specs fail clearly; tiny random T5 and CLIP
folders (built here with their own tokenizers) load through the same door. CPU, no network."""

import json
import socket

import pytest
import torch

from moviola.models.text import (TextEncoder, TextEncoderError, load_text_encoder, text_encoder_from_config)

PROMPTS = ["a red ball moves left", "a small blue square moves right behind a large green circle", ""]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def no_network():
    """Any attempt to open a connection fails the load."""
    def refuse(*args, **kwargs):
        raise AssertionError("the text encoder tried to reach the network")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        yield


@pytest.fixture(scope="module")
def enc(no_network) -> TextEncoder:
    return load_text_encoder(None)


def real_token_count(enc: TextEncoder, prompt: str) -> int:
    return len(enc.tokenizer(prompt, truncation=True, max_length=enc.max_length)["input_ids"])


# --- the default -----------------------------------------------------------------------------------

def test_default_loads_offline_with_shapes_and_mask(enc):
    assert enc.dim == 384 and enc.max_length == 32 and enc.device.type == "cpu"
    assert enc.config() == {"kind": "minilm", "path": "minilm", "max_length": 32, "dim": 384}
    tokens, mask = enc.encode(PROMPTS)
    assert tokens.shape == (3, 32, 384) and tokens.dtype == torch.float32
    assert mask.shape == (3, 32) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [real_token_count(enc, p) for p in PROMPTS]
    for i in range(3):
        n = int(mask[i].sum())
        assert mask[i, :n].all()  # real tokens first, then padding
        assert (tokens[i, n:] == 0).all() and (tokens[i, :n].abs().sum(-1) > 0).all()
    assert not any(p.requires_grad for p in enc.parameters())


def test_empty_prompt_is_cls_and_sep(enc):
    tokens, mask = enc.encode([""])
    assert mask.sum().item() == 2
    assert enc.tokenizer.convert_ids_to_tokens(enc.tokenizer("")["input_ids"]) == ["[CLS]", "[SEP]"]
    assert torch.isfinite(tokens).all()
    other, _ = enc.encode(["a red ball"])
    assert not torch.allclose(tokens[0, :2], other[0, :2])


def test_cache_hits_and_identical_embeddings(enc):
    enc.clear_cache()
    calls, hits = enc.model_calls, enc.cache_hits
    a, ma = enc.encode(["a green circle moves up"])
    assert enc.model_calls == calls + 1
    b, mb = enc.encode(["a green circle moves up"])
    assert enc.model_calls == calls + 1 and enc.cache_hits == hits + 1  # not re-encoded
    assert torch.equal(a, b) and torch.equal(ma, mb)
    # a batch with a repeat and one new prompt: one call for the new one; repeated rows are identical
    c, _ = enc.encode(["a white ball", "a green circle moves up", "a white ball"])
    assert enc.model_calls == calls + 2
    assert torch.equal(c[1], a[0]) and torch.equal(c[0], c[2])
    assert not torch.allclose(c[0], c[1])  # different prompts differ


def test_lru_cache_is_bounded(enc):
    small = TextEncoder(enc.model, enc.tokenizer, kind="minilm", path="minilm", cache_size=2)
    small.encode(["one"])
    small.encode(["two"])
    small.encode(["one"])  # "one" is now the most recent
    small.encode(["three"])  # evicts "two"
    calls = small.model_calls
    small.encode(["one", "three"])
    assert small.model_calls == calls
    small.encode(["two"])
    assert small.model_calls == calls + 1
    assert len(small._cache) == 2


def test_batch_padding_does_not_change_a_prompt(enc):
    short, long = "a ball", "a large red ball moves left quickly behind a small green square on white"
    enc.clear_cache()
    alone, mask_alone = enc.encode([short])
    enc.clear_cache()
    batched, mask_batched = enc.encode([long, short])
    assert torch.equal(mask_batched[1], mask_alone[0])
    n = int(mask_alone.sum())
    torch.testing.assert_close(batched[1, :n], alone[0, :n], atol=1e-5, rtol=1e-5)


def test_truncation_train_mode_and_input_checks(enc):
    tokens, mask = enc.encode([" ".join(["ball"] * 100)])
    assert mask.all()  # truncated to exactly max_length
    enc.train()
    assert not enc.training and not enc.model.training  # frozen: dropout stays off
    with pytest.raises(TypeError):
        enc.encode("a red ball")


# --- bad specs -------------------------------------------------------------------------------------

def test_errors_name_the_path_and_what_is_supported(tmp_path, no_network):
    missing = str(tmp_path / "nope")
    with pytest.raises(TextEncoderError, match="does not exist") as e:
        load_text_encoder(missing)
    assert missing in str(e.value) and "t5" in str(e.value)
    with pytest.raises(TextEncoderError, match="hub id") as e:
        load_text_encoder("google/t5-v1_1-base")
    assert "never downloads" in str(e.value)
    assert isinstance(e.value, ValueError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextEncoderError, match="no config.json"):
        load_text_encoder(tmp_path / "empty")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "bert-nonsense"}))
    with pytest.raises(TextEncoderError, match="bert-nonsense.*not supported.*clip_text_model"):
        load_text_encoder(odd)
    (tmp_path / "file.bin").write_bytes(b"")
    with pytest.raises(TextEncoderError, match="not a model folder"):
        load_text_encoder(tmp_path / "file.bin")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "t5"}))  # no weights, no tokenizer
    with pytest.raises(TextEncoderError, match="cannot load the t5"):
        load_text_encoder(broken)


# --- T5 and CLIP, tiny and random, with tokenizers built offline ----------------------------------

WORDS = ("a red green blue white black ball square circle moves left right up down behind large small on"
         .split())
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory, no_network):
    """A 1-layer T5 encoder (d_model 16) with a Unigram tokenizer over a few words and the letters."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    folder = tmp_path_factory.mktemp("t5")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in LETTERS]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(folder)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(vocab), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    T5EncoderModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory, no_network):
    """A 1-layer CLIP text model (width 16, 32 positions) with a character-level BPE tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in LETTERS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    CLIPTextModel(config).save_pretrained(folder)
    return folder


def test_tiny_t5_folder(tiny_t5):
    enc = load_text_encoder(str(tiny_t5))
    assert enc.kind == "t5" and enc.dim == 16
    assert enc.config() == {"kind": "t5", "path": str(tiny_t5.resolve()), "max_length": 32, "dim": 16}
    tokens, mask = enc.encode(["a red ball moves left", ""])
    assert tokens.shape == (2, 32, 16) and mask.shape == (2, 32)
    assert mask.sum(1).tolist() == [6, 1]  # five words + </s>; "" is </s> alone
    ids = enc.tokenizer(["a red ball moves left"], return_tensors="pt")
    with torch.no_grad():
        ref = enc.model(**ids).last_hidden_state  # (1, 6, 16)
    torch.testing.assert_close(tokens[0, :6], ref[0], atol=1e-6, rtol=1e-6)
    # the saved config reloads the same encoder; a changed width is caught
    again = text_encoder_from_config(enc.config())
    assert torch.equal(again.encode(["a red ball moves left"])[0], tokens[:1])
    with pytest.raises(TextEncoderError, match="width"):
        text_encoder_from_config({**enc.config(), "dim": 384})


def test_tiny_clip_folder(tiny_clip):
    enc = load_text_encoder(tiny_clip, max_length=16)
    assert enc.kind == "clip_text_model" and enc.dim == 16
    tokens, mask = enc.encode(["a red ball", ""])
    assert tokens.shape == (2, 16, 16)
    assert mask.sum(1).tolist() == [real_token_count(enc, "a red ball"), 2]  # "" is <bos> <eos>
    assert torch.isfinite(tokens).all()
    with pytest.raises(TextEncoderError, match="max_length 64"):
        load_text_encoder(tiny_clip, max_length=64)  # beyond CLIP's 32 positions


def test_the_default_runs_without_transformers_and_matches_its_bert(enc):
    """The packaged MiniLM runs on Moviola's own BERT module (no transformers import on the main path);
    it computes what transformers' BertModel computes, padding, truncation and "" included."""
    from transformers import AutoTokenizer, BertModel

    from moviola.models.text import MiniBert, default_model_path

    assert isinstance(enc.model, MiniBert)
    folder = str(default_model_path())
    tok, ref = AutoTokenizer.from_pretrained(folder), BertModel.from_pretrained(folder).eval()
    prompts = PROMPTS + ["a large purple triangle " * 12 + "falls"]  # longer than max_length: truncated
    ours = enc.tokenizer(prompts, padding="longest", truncation=True, max_length=enc.max_length, return_tensors="pt")
    theirs = tok(prompts, padding="longest", truncation=True, max_length=enc.max_length, return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    with torch.no_grad():
        a = enc.model(ours["input_ids"], ours["attention_mask"]).last_hidden_state
        b = ref(**theirs).last_hidden_state
    real = theirs["attention_mask"].bool()
    assert (a[real] - b[real]).abs().max() < 1e-5


def test_loading_the_default_does_not_import_transformers():
    import subprocess
    import sys

    code = ("import sys; from moviola.models.text import load_text_encoder; e = load_text_encoder(None); "
            "e.encode(['a red ball']); print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
