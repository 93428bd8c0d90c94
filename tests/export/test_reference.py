"""The streamed transformers reference (weights read per module) equals the loaded model."""

from __future__ import annotations

import numpy as np
import pytest

from stagedx.export.verify import random_tree, reference_outputs
from tests._models import make_decoder_checkpoint, make_gpt2_checkpoint


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral"])
def test_streamed_reference_equals_the_loaded_model(tmp_path, family):
    import torch

    from stagedx.export.arch import load_reference, open_checkpoint
    from stagedx.export.reference import streamed_model

    torch.set_num_threads(1)
    if family == "gpt2":
        path = make_gpt2_checkpoint(tmp_path / family, seed=3)
    else:  # untied llama head; a windowed mistral
        extra = {"tie_word_embeddings": False} if family == "llama" else {"sliding_window": 3}
        path = make_decoder_checkpoint(tmp_path / family, family, seed=3, **extra)
    ckpt = open_checkpoint(str(path))
    case = random_tree(ckpt.dims.vocab_size, 6, 7, seed=1)
    loaded = reference_outputs(load_reference(ckpt), case, ckpt.dims.n_layers)
    model = streamed_model(ckpt.path, ckpt.spec.hf_class)
    streamed = reference_outputs(model, case, ckpt.dims.n_layers)
    assert set(streamed) == set(loaded)
    for name, ref in loaded.items():
        np.testing.assert_allclose(streamed[name], ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing stays loaded


def test_batched_reference_equals_one_sequence_at_a_time(tmp_path):
    """Right-padded batching changes nothing: each node's row equals its sequence alone."""
    import torch

    from stagedx.export.arch import load_reference, open_checkpoint

    ckpt = open_checkpoint(str(make_decoder_checkpoint(tmp_path / "m", "mistral", sliding_window=3)))
    model = load_reference(ckpt)
    case = random_tree(ckpt.dims.vocab_size, 5, 6, seed=2)
    batched = reference_outputs(model, case, ckpt.dims.n_layers)["logits"]
    with torch.no_grad():
        for i in range(len(case.tokens)):
            seq = np.concatenate([case.past_ids, case.tokens[case.ancestors(i)]])
            alone = model(torch.from_numpy(seq)[None]).logits[0, -1].numpy()  # [V]
            np.testing.assert_allclose(batched[i], alone, rtol=0, atol=1e-5 * np.abs(alone).max())
