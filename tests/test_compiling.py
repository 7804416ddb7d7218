"""aevb.compiling: `compile.mode` trains through torch.compile of the loss; bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from aevb.compiling import compile_settings, compile_training
from aevb.errors import ConfigError
from aevb.vae import VAE

from .conftest import check_light_answer


def test_settings_default_to_eager_and_refuse_what_cannot_compile() -> None:
    assert compile_settings({}) == (None, "inductor")  # configs older than the key
    assert compile_settings({"compile": {"mode": "reduce-overhead", "backend": "inductor"}}) == (
        "reduce-overhead",
        "inductor",
    )
    bad = [
        ({"compile": {"mode": "fast"}}, "compile.mode"),
        ({"compile": {"mode": "default", "backend": ""}}, "compile.backend"),
        ({"compile": {"mode": "default"}, "model": {"algorithm": "mcem"}}, "compile.mode"),
    ]
    for cfg, key in bad:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            compile_settings(cfg)


def test_training_steps_run_the_compiled_loss_and_evaluation_stays_eager() -> None:
    torch.manual_seed(0)
    model = VAE(data_shape=(1, 4, 4), latent_dim=2, hidden_dims=(8,))
    x = (torch.rand(6, 1, 4, 4) < 0.5).float()
    compile_training(model, None)
    assert model.compiled_terms is None
    compile_training(model, "default", backend="aot_eager")  # traced, no code generation
    counters.clear()
    torch.manual_seed(1)
    compiled = model.compiled_terms(x)
    torch.manual_seed(1)
    eager = model.elbo_terms(x)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo captured the loss
    for name in ("recon", "kl", "kl_per_dim"):  # aot_eager runs the eager kernels and draws
        assert torch.equal(getattr(compiled, name), getattr(eager, name)), name
    calls = []
    inner = model.compiled_terms
    model.compiled_terms = lambda batch: calls.append(len(batch)) or inner(batch)
    loss = model._step((x,), "train")
    loss.backward()  # gradients flow through the compiled graph
    assert calls == [6] and model.encoder.parameters().__next__().grad is not None
    model._step((x,), "val")
    assert calls == [6]  # validation (and test) stay eager


def test_a_bad_mode_is_one_line_before_torch_loads(tmp_path: Path) -> None:
    check_light_answer(
        "aevb.train", "aevb-train", ["compile.mode=fast"], tmp_path, 2, "compile.mode"
    )
