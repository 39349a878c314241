"""Model factory and checkpoints: every weights layout users bring is read back to equal weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.checkpoint import CheckpointError, load_checkpoint, read_state_dict, save_checkpoint
from training.models import create_model
from training.models.tiny import multilingual_text_dir


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    """A tiny model whose weights differ from any fresh one (so a load that did nothing fails the test)."""
    torch.set_num_threads(1)
    torch.manual_seed(123)
    lm = create_model("rsclip-tiny")
    with torch.no_grad():
        for p in lm.model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return lm.model


class Evil:
    """Any non-tensor object: reading it back needs pickle code execution, which must be refused."""


def _assert_equal_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_tiny_models_build_and_encode() -> None:
    for name, dim in (("rsclip-tiny", 64), ("rsclip-tiny-multilingual", 64)):
        lm = create_model(name)
        assert (lm.image_size, lm.context_length, lm.embed_dim) == (64, 77, dim)
        with torch.no_grad():
            assert lm.model.encode_image(torch.zeros(1, 3, 64, 64)).shape == (1, dim)
            assert lm.model.encode_text(lm.tokenizer(["a river"])).shape == (1, dim)


def test_multilingual_dir_loads_offline_with_transformers() -> None:
    from transformers import AutoConfig, AutoTokenizer

    d = multilingual_text_dir()
    assert multilingual_text_dir() == d  # built once, then reused
    cfg = AutoConfig.from_pretrained(str(d))
    tok = AutoTokenizer.from_pretrained(str(d))
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers) == ("xlm-roberta", 64, 2)
    assert [tok.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    ids = tok("一张森林的卫星图像。")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids  # Chinese is in the vocabulary, no <unk>


@pytest.mark.parametrize("layout", ["safetensors", "pt-plain", "pt-state_dict", "pt-model-module", "bin"])
def test_foreign_checkpoint_layouts(layout: str, trained: torch.nn.Module, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.clone().contiguous() for k, v in trained.state_dict().items()}
    if layout == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    elif layout == "pt-plain":
        path = tmp_path / "w.pt"
        torch.save(state, path)
    elif layout == "pt-state_dict":
        path = tmp_path / "w.pth"
        torch.save({"state_dict": state, "epoch": 3}, path)
    elif layout == "pt-model-module":  # Paper A's layout, saved from DataParallel
        path = tmp_path / "w.pt"
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "optimizer": {"lr": torch.tensor(1e-5)}}, path)
    else:
        path = tmp_path / "w.bin"
        torch.save(state, path)
    lm = create_model("rsclip-tiny", checkpoint=path)
    _assert_equal_weights(lm.model, trained)
    assert lm.checkpoint == str(path)


def test_project_checkpoint_round_trip(trained: torch.nn.Module, tmp_path: Path) -> None:
    ckpt = save_checkpoint(trained, tmp_path / "ckpt", "rsclip-tiny", step=42, extra={"recipe": "smoke"})
    info, _ = load_checkpoint(ckpt)
    assert (info.model_name, info.step, info.extra) == ("rsclip-tiny", 42, {"recipe": "smoke"})
    lm = create_model("", checkpoint=ckpt)  # the checkpoint names its architecture
    _assert_equal_weights(lm.model, trained)
    save_checkpoint(trained, ckpt, "rsclip-tiny", step=43)  # replaces in place
    assert load_checkpoint(ckpt)[0].step == 43
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with pytest.raises(CheckpointError, match="holds a 'rsclip-tiny' model"):
        create_model("rsclip-tiny-multilingual", checkpoint=ckpt)


def test_checkpoint_errors_name_the_file(trained: torch.nn.Module, tmp_path: Path) -> None:
    state = dict(trained.state_dict())
    state.pop("text_projection")
    partial = tmp_path / "partial.pt"
    torch.save(state, partial)
    with pytest.raises(CheckpointError, match=r"partial\.pt: does not fit the model: 1 missing keys"):
        create_model("rsclip-tiny", checkpoint=partial)

    other = tmp_path / "other.pt"
    torch.save({"foo": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match=r"other\.pt: does not fit the model"):
        create_model("rsclip-tiny", checkpoint=other)

    pickled = tmp_path / "pickled.pt"
    torch.save({"model": Evil()}, pickled)
    with pytest.raises(CheckpointError, match=r"pickled\.pt: cannot be read with torch.load\(weights_only=True\)"):
        read_state_dict(pickled)

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: not a readable safetensors file"):
        read_state_dict(junk)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_state_dict(tmp_path / "missing.pt")
    wrong = tmp_path / "model.onnx"
    wrong.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        read_state_dict(wrong)


def test_pretrained_needs_internet_message() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        create_model("ViT-Nope-99")
    with pytest.raises(ValueError, match="either a pretrained tag or a checkpoint"):
        create_model("rsclip-tiny", pretrained="openai", checkpoint="x.pt")


def test_multilingual_tokenizer_training_is_deterministic() -> None:
    from training.models.tiny import train_multilingual_tokenizer

    assert train_multilingual_tokenizer().to_str() == train_multilingual_tokenizer().to_str()
