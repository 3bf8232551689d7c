"""The five architectures behave alike: shapes, reconstruction, gradients, determinism, training."""

from __future__ import annotations

import json

import pytest
import torch

from src_models import ARCHITECTURES, DESCRIPTIONS, build_model, load_checkpoint, save_checkpoint
from src_models.nets.registry import has_restoration
from src_models.training.losses import paper_loss

WIDTH = 4
RESTORING = {"drs_unet", "kcmdrs_unet", "dsmsc_unet"}
PREPROCESSING = {"hu_window": [-100.0, 240.0], "spacing_mm": 0.8}


def test_architecture_names_are_the_papers_five() -> None:
    assert ARCHITECTURES == ("fcn", "unet", "drs_unet", "kcmdrs_unet", "dsmsc_unet")
    assert set(DESCRIPTIONS) == set(ARCHITECTURES)
    assert {name for name in ARCHITECTURES if has_restoration(name)} == RESTORING


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(KeyError) as excinfo:
        build_model("vnet")
    assert all(name in str(excinfo.value) for name in ARCHITECTURES)


def test_override_that_contradicts_the_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="skip_module"):
        build_model("unet", width=WIDTH, skip_module="multi_scale")


@pytest.mark.parametrize("arch", ARCHITECTURES)
class TestArchitecture:
    @pytest.fixture
    def model(self, arch: str) -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(arch, width=WIDTH)

    @pytest.mark.parametrize("shape", [(1, 1, 61, 83), (2, 1, 32, 48)])
    def test_output_shapes(self, arch: str, model: torch.nn.Module, shape: tuple) -> None:
        output = model(torch.rand(shape))
        batch, _, height, width = shape
        assert output.logits.shape == (batch, 2, height, width)
        if arch in RESTORING:
            assert output.reconstruction.shape == (batch, 1, height, width)
            assert 0 <= output.reconstruction.min() and output.reconstruction.max() <= 1
        else:
            assert output.reconstruction is None

    def test_restoration_can_be_skipped(self, model: torch.nn.Module) -> None:
        keys = list(model.state_dict())
        output = model(torch.rand(1, 1, 32, 32), reconstruct=False)
        assert output.reconstruction is None and output.logits.shape == (1, 2, 32, 32)
        assert list(model.state_dict()) == keys

    def test_config_rebuilds_the_same_network(self, model: torch.nn.Module) -> None:
        config = json.loads(json.dumps(model.config))
        rebuilt = build_model(config.pop("arch"), **config)
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
            k: v.shape for k, v in model.state_dict().items()
        }

    def test_backward_reaches_every_parameter(self, model: torch.nn.Module) -> None:
        image = torch.rand(2, 1, 32, 48)
        labels = torch.randint(0, 3, (2, 32, 48))
        paper_loss(model(image), labels, image).total.backward()
        for name, parameter in model.named_parameters():
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all(), name

    def test_eval_is_deterministic(self, model: torch.nn.Module) -> None:
        model.eval()
        image = torch.rand(1, 1, 40, 40)
        with torch.inference_mode():
            first, second = model(image), model(image)
        assert torch.equal(first.logits, second.logits)

    def test_channels_last_gives_the_same_logits(self, model: torch.nn.Module) -> None:
        model.eval()
        image = torch.rand(1, 1, 37, 45)
        with torch.inference_mode():
            reference = model(image).logits
            model.to(memory_format=torch.channels_last)
            fast = model(image.contiguous(memory_format=torch.channels_last)).logits
        torch.testing.assert_close(fast, reference, rtol=1e-3, atol=1e-4)

    def test_checkpoint_round_trip(self, model: torch.nn.Module, tmp_path) -> None:
        model.eval()
        image = torch.rand(1, 1, 29, 35)
        path = save_checkpoint(tmp_path / "m.pt", model, preprocessing=PREPROCESSING)
        loaded, meta = load_checkpoint(path)
        assert not loaded.training and meta["config"] == model.config
        with torch.inference_mode():
            expected, actual = model(image), loaded(image)
        assert torch.equal(expected.logits, actual.logits)
        if expected.reconstruction is not None:
            assert torch.equal(expected.reconstruction, actual.reconstruction)

    def test_a_few_steps_reduce_the_loss(self, model: torch.nn.Module) -> None:
        generator = torch.Generator().manual_seed(1)
        image = torch.rand(2, 1, 32, 32, generator=generator)
        labels = torch.zeros(2, 32, 32, dtype=torch.long)
        labels[:, 8:20, 10:24] = 1
        labels[:, 12:16, 14:18] = 2
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(6):
            optimizer.zero_grad()
            loss = paper_loss(model(image), labels, image).total
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < 0.9 * losses[0], losses


def test_every_architecture_takes_its_defining_options_repeated():
    # a loop over the five passing restoration / skip_module broke on FCN with a TypeError
    from src_models import build_model
    from src_models.nets.registry import ARCHITECTURES, has_restoration

    for name in ARCHITECTURES:
        skip = {"kcmdrs_unet": "same_kernel", "dsmsc_unet": "multi_scale"}.get(name, "none")
        model = build_model(name, width=2, depth=3, restoration=has_restoration(name),
                            skip_module=skip)  # fmt: skip
        assert model.config["arch"] == name
    with pytest.raises(ValueError, match="restoration=True contradicts architecture 'fcn'"):
        build_model("fcn", width=2, depth=3, restoration=True)
