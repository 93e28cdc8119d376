"""The similarity map records the real layer inputs and writes a readable heatmap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_oracle import hf_model
from skip_helpers import NUM_LAYERS, task_batches

from lego_embed.skip.similarity import compute_similarity, record_states, save_similarity


@pytest.mark.parity
def test_recorded_states_are_the_layer_inputs_and_the_final_norm_input(tiny_loaded):
    """Against the oracle: HF's hidden states of the same padded batch."""
    batch = task_batches(tiny_loaded.tokenizer, 5, seed=3, batch_size=5)[0]
    states = record_states(tiny_loaded.model, batch, range(NUM_LAYERS + 1))
    real = batch.attention_mask.bool()
    oracle = hf_model(tiny_loaded.path)
    with torch.no_grad():
        out = oracle.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           output_hidden_states=True)
        final = tiny_loaded.model.norm(states[NUM_LAYERS])
    for layer in range(NUM_LAYERS):
        torch.testing.assert_close(states[layer], out.hidden_states[layer][real])
    torch.testing.assert_close(final, out.last_hidden_state[real])
    assert states[0].shape == (int(real.sum()), tiny_loaded.args.hidden_size)


def test_similarity_matrix_is_a_mean_cosine_matrix(tiny_loaded, tmp_path):
    batches = task_batches(tiny_loaded.tokenizer, 20, seed=4, batch_size=8)
    similarity = compute_similarity(tiny_loaded.model, batches)
    matrix = similarity.matrix
    assert matrix.shape == (NUM_LAYERS + 1, NUM_LAYERS + 1)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-6)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-5)
    assert similarity.tokens == sum(b.real_tokens for b in batches)
    assert similarity.sequences == 20
    # one entry recomputed by hand from the recorded states
    first = record_states(tiny_loaded.model, batches[0], [1, 4])
    cos = torch.nn.functional.cosine_similarity(first[1], first[4], dim=-1)
    single = compute_similarity(tiny_loaded.model, batches[:1])
    assert abs(single.matrix[1, 4] - float(cos.mean())) < 1e-5
    save_similarity(similarity, tmp_path / "map.npy", tmp_path / "map.png", "tiny")
    np.testing.assert_array_equal(np.load(tmp_path / "map.npy"), matrix)
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
