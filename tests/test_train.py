"""Fine-tuning: selection applied exactly, frozen parts untouched, learning works, resume is exact."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from interruptions import Killed, StopAfter, kill_after_epoch
from selection_factory import CLASSES, selection_doc
from torch import nn

from entropy_ft.device import resolve_device, resolve_precision
from entropy_ft.errors import UserError
from entropy_ft.model import factory as models
from entropy_ft.model.freezing import apply_selection, frozen_batchnorms, split_frozen_prefix
from entropy_ft.training.checkpoint import load_checkpoint, save_checkpoint
from entropy_ft.training.loop import TrainConfig, lr_factor, train
from entropy_ft.training.preemption import Preempted


def _model(arch: str, strategy: str, seed: int = 0) -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)
    model, _ = models.build_model(arch, len(CLASSES), "none")
    return model, selection_doc(arch, strategy)


@pytest.mark.parametrize("arch", ["resnet18", "squeezenet1_1"])
def test_apply_selection_trains_exactly_the_selected_modules(arch):
    model, sel = _model(arch, "alternate")
    params = apply_selection(model, sel["trainable_modules"])
    assert sum(p.numel() for p in params) == sel["trainable_params"]
    modules = dict(model.named_modules())
    trainable_ids = {id(p) for name in sel["trainable_modules"] for p in modules[name].parameters()}
    for name, p in model.named_parameters():
        assert p.requires_grad == (id(p) in trainable_ids), name


@pytest.mark.parametrize("arch", ["resnet18", "squeezenet1_1"])
@pytest.mark.parametrize("strategy", ["alternate", "head", "full"])
def test_frozen_prefix_split_computes_the_same_function(arch, strategy):
    model, sel = _model(arch, strategy)
    apply_selection(model, sel["trainable_modules"])
    staged = split_frozen_prefix(model, arch)
    model.eval(), staged.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(staged(x), model(x))
    if strategy == "full":
        assert len(staged.prefix) == 0
    else:
        assert len(staged.prefix) > 0
        assert not any(p.requires_grad for p in staged.prefix.parameters())


def test_frozen_prefix_keeps_no_autograd_graph_and_trainable_layers_get_gradients():
    model, sel = _model("resnet18", "alternate")
    apply_selection(model, sel["trainable_modules"])
    staged = split_frozen_prefix(model, "resnet18").train()
    seen = {}

    def record(_module, _inputs, out) -> None:
        seen["requires_grad"] = out.requires_grad

    staged.prefix[-1].register_forward_hook(record)
    staged(torch.randn(2, 3, 64, 64)).sum().backward()
    assert seen["requires_grad"] is False  # nothing stored for backward in the prefix
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


def test_train_mode_keeps_frozen_batchnorms_in_eval_mode():
    model, sel = _model("resnet18", "alternate")
    apply_selection(model, sel["trainable_modules"])
    split_frozen_prefix(model, "resnet18").train()
    frozen = frozen_batchnorms(model)
    trainable_bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m not in frozen]
    assert frozen and trainable_bns
    assert all(not bn.training for bn in frozen)
    assert all(bn.training for bn in trainable_bns)


def test_lr_schedule_warms_up_then_decays_to_zero():
    assert lr_factor(0, 100, 5) == pytest.approx(0.2)
    assert lr_factor(4, 100, 5) == pytest.approx(1.0)
    assert lr_factor(5, 100, 5) == pytest.approx(1.0)
    assert lr_factor(52, 100, 5) == pytest.approx(0.5, abs=0.02)
    assert lr_factor(100, 100, 5) == pytest.approx(0.0)


def test_precision_choice(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr("entropy_ft.device.cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr("entropy_ft.device.cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(UserError, match="--precision fp16"):
        resolve_precision("fp16", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cuda"):
            resolve_device("cuda")


def test_train_config_rejects_bad_values_naming_the_flag():
    with pytest.raises(UserError, match="--epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(UserError, match="--lr"):
        TrainConfig(lr=-1)
    with pytest.raises(UserError, match="--precision"):
        TrainConfig(precision="fp8")


# ----------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def learn_dataset(tmp_path_factory):
    """320 phantoms at 48 px: lesions big enough for a randomly initialised resnet18 to learn in a few epochs."""
    from entropy_ft.steps import ingest

    out = tmp_path_factory.mktemp("learn") / "synthetic"
    ingest.run(ingest.Config(sources=("synthetic:320",), out=str(out), image_size=48, seed=0))
    return out


# from random weights in 4 epochs: without the default training noise, which slows learning from scratch
LEARN = TrainConfig(epochs=4, batch_size=16, patience=4, precision="fp32", device="cpu", seed=0, train_noise=0.0)


@pytest.fixture(scope="module", params=["full", "alternate"])
def trained(request, learn_dataset):
    model, sel = _model("resnet18", request.param)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    epochs_seen = []
    result = train(model, "resnet18", sel["trainable_modules"], learn_dataset, LEARN,
                   on_epoch_end=lambda epoch, metrics: epochs_seen.append((epoch, metrics["val_macro_f1"])))
    return sel, before, result, epochs_seen


def test_training_beats_chance_by_far(trained):
    sel, _, result, epochs_seen = trained
    assert result.best_val_macro_f1 >= 0.5, (sel["strategy"], [h["val_macro_f1"] for h in result.history])
    assert result.history[-1]["val_macro_f1"] > result.history[0]["val_macro_f1"]
    assert result.trainable_params == sel["trainable_params"]
    assert [e for e, _ in epochs_seen] == [1, 2, 3, 4]  # the callback saw every epoch as it ended
    assert result.best_val_macro_f1 == max(f for _, f in epochs_seen)
    assert result.history[result.best_epoch - 1]["val_macro_f1"] == result.best_val_macro_f1


def test_frozen_weights_and_batchnorm_statistics_are_bit_identical(trained):
    sel, before, result, _ = trained
    trainable_prefixes = tuple(f"{name}." for name in sel["trainable_modules"])
    after = result.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k].cpu())}
    frozen = {k for k in before if not k.startswith(trainable_prefixes)}
    assert not (changed & frozen), sorted(changed & frozen)[:5]
    # the trained side really trained: weights and the running statistics of trainable BatchNorms moved
    assert any(k.endswith(".weight") for k in changed)
    assert any(k.endswith("running_mean") for k in changed)
    if sel["strategy"] == "alternate":
        assert any(k.endswith("running_var") for k in frozen)


# ----------------------------------------------------------------------------- resume


RESUME = TrainConfig(epochs=3, batch_size=16, patience=3, precision="fp32", device="cpu", seed=3)


@pytest.mark.parametrize(("arch", "noise"), [("resnet18", 0.0), ("squeezenet1_1", 0.0), ("resnet18", 0.3)])
def test_resumed_run_ends_with_bit_identical_weights(arch, noise, synthetic_dataset, tmp_path):
    """BatchNorm statistics, dropout RNG, and the per-image training noise all resume exactly."""
    sel = selection_doc(arch, "alternate")
    recipe = dataclasses.replace(RESUME, train_noise=noise, train_noise_p=1.0)

    def fresh() -> nn.Module:
        return _model(arch, "alternate", seed=1)[0]

    reference = train(fresh(), arch, sel["trainable_modules"], synthetic_dataset, recipe)

    ckpt = str(tmp_path / "ckpt")
    fp = {"test": arch}
    with pytest.raises(Preempted) as preempted:  # SIGTERM in the middle of epoch 1 (8 batches per epoch)
        train(fresh(), arch, sel["trainable_modules"], synthetic_dataset, recipe, ckpt, fingerprint=fp,
              stop=StopAfter(4))
    assert preempted.value.code == 143
    assert load_checkpoint(ckpt, {})["batches_done"] == 4
    with pytest.raises(Killed):  # killed right after epoch 2's checkpoint
        train(fresh(), arch, sel["trainable_modules"], synthetic_dataset, recipe, ckpt, resume=True, fingerprint=fp,
              on_epoch_end=kill_after_epoch(2))
    resumed = train(fresh(), arch, sel["trainable_modules"], synthetic_dataset, recipe, ckpt, resume=True,
                    fingerprint=fp)

    assert resumed.best_epoch == reference.best_epoch
    # epoch 1 was timed over its last 4 of 8 batches only, and says so, so no benchmark averages it in
    assert [h["resumed_at_batch"] for h in resumed.history] == [4, 0, 0]
    assert [h["resumed_at_batch"] for h in reference.history] == [0, 0, 0]
    assert [h["val_macro_f1"] for h in resumed.history] == [h["val_macro_f1"] for h in reference.history]
    assert [h["train_accuracy"] for h in resumed.history] == [h["train_accuracy"] for h in reference.history]
    ref_state, res_state = reference.model.state_dict(), resumed.model.state_dict()
    assert ref_state.keys() == res_state.keys()
    unequal = [k for k in ref_state if not torch.equal(ref_state[k], res_state[k])]
    assert not unequal, unequal[:5]


def test_resume_refuses_a_checkpoint_from_another_recipe(tmp_path):
    save_checkpoint(str(tmp_path), {"fingerprint": {"lr": 0.001, "seed": 0}, "epoch": 1, "batches_done": 0})
    with pytest.raises(UserError, match="lr"):
        load_checkpoint(str(tmp_path), {"lr": 0.01, "seed": 0})
    assert load_checkpoint(str(tmp_path / "none"), {"lr": 0.01}) is None
    assert load_checkpoint(str(tmp_path), {"lr": 0.001})["epoch"] == 1


def test_train_noise_is_a_function_of_seed_epoch_and_batch():
    from entropy_ft.data.resumable import train_noise

    sigmas, g = train_noise(3, 1, 5, 1000, 0.4, 0.5)
    again, g2 = train_noise(3, 1, 5, 1000, 0.4, 0.5)
    assert torch.equal(sigmas, again) and torch.equal(torch.randn(4, generator=g), torch.randn(4, generator=g2))
    assert not torch.equal(sigmas, train_noise(3, 1, 6, 1000, 0.4, 0.5)[0])  # another batch, other draws
    noisy = sigmas[sigmas > 0]
    assert 0.4 < len(noisy) / 1000 < 0.6 and noisy.max() <= 0.4 and 0.17 < noisy.mean() < 0.23
    with pytest.raises(UserError, match="--train-noise -1: expected 0 to 1"):
        TrainConfig(train_noise=-1)


# ----------------------------------------------------------------------------- torch.compile


def test_compiled_model_computes_the_eager_loss_and_gradients():
    """torch.compile (--compile) is a speed option only: on the same batch the compiled training model gives the
    eager loss and gradients to float tolerance (whole runs drift apart, as Adam's first steps amplify any rounding)."""
    model, sel = _model("resnet18", "alternate", seed=1)
    apply_selection(model, sel["trainable_modules"])
    staged = split_frozen_prefix(model, "resnet18").train()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % len(CLASSES)

    def loss_and_grads(module):
        model.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(module(x), y)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    eager_loss, eager_grads = loss_and_grads(staged)
    compiled_loss, compiled_grads = loss_and_grads(torch.compile(staged))
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    assert compiled_grads.keys() == eager_grads.keys() and len(eager_grads) > 2
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-3, atol=1e-4 * grad.abs().max().item() + 1e-8,
                                   msg=name)


def test_a_compiled_run_trains_the_selection_and_nothing_else(synthetic_dataset):
    sel = selection_doc("resnet18", "alternate")
    recipe = dataclasses.replace(RESUME, epochs=1, train_noise=0.0, compile="default")
    model = _model("resnet18", "alternate", seed=1)[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, "resnet18", sel["trainable_modules"], synthetic_dataset, recipe)
    assert recipe.recipe() == dataclasses.replace(recipe, compile="off").recipe()  # a resume may switch it
    after = result.model.state_dict()
    trainable = tuple(f"{name}." for name in sel["trainable_modules"])
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(trainable) for k in changed)
    assert len(result.history) == 1 and result.history[0]["train_loss"] > 0
