"""Folding head temperatures into the query weights (as both exporters get them from
export/weights.py) gives the same logits with λ = 1, every family that declares where they fold;
a family that declares they cannot (Qwen3's per-head q-norm) refuses a table other than all 1."""

import pytest
import torch

from edgelm.errors import UserError
from edgelm.export.weights import ExportedWeights
from edgelm.models import open_checkpoint

from .test_families import ALL_PRESETS

TOL = 1e-5


@pytest.mark.parametrize("name", ALL_PRESETS)
@torch.no_grad()
def test_baked_model_equals_model_with_temperatures(preset_dir, name):
    checkpoint = open_checkpoint(preset_dir(name))
    model = checkpoint.load_model()
    spec = model.spec
    table = 0.5 + 1.5 * torch.rand(spec.num_layers, spec.num_heads)
    model.set_head_temperatures(table)
    ids = torch.randint(0, spec.vocab_size, (1, 32))
    expected, _ = model(ids)
    if checkpoint.family.query_tensors(spec, 0) is None:
        with pytest.raises(UserError, match=f"head temperatures cannot be folded into a {spec.family} model's weights"):
            ExportedWeights(checkpoint, table)
        ExportedWeights(checkpoint, torch.ones_like(table))  # λ = 1 folds nothing: exported as it is
        return
    weights = ExportedWeights(checkpoint, table)
    baked_model = checkpoint.load_model()
    baked_model.load_state_dict({name: weights.get(name) for name in checkpoint.weight_names()}, strict=False)
    baked_model.set_head_temperatures(torch.ones_like(table))
    baked, _ = baked_model(ids)
    assert (baked - expected).abs().max().item() <= TOL
    plain, _ = checkpoint.load_model()(ids)
    assert (plain - expected).abs().max().item() > 100 * TOL  # the temperatures did something
