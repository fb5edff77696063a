"""The facts about torch's recurrent layers that users trip on, and that our graphs rely on."""

from __future__ import annotations

import pytest
import torch

from rnnserve.export.cells import make_cell, run_cell, zero_state


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_one_way_output_last_step_is_last_layer_final_state(cell: str) -> None:
    torch.manual_seed(0)
    rnn = make_cell(cell, input_size=3, hidden_size=5, num_layers=2)
    output, state = run_cell(rnn, torch.randn(4, 7, 3), zero_state(rnn, 4))
    torch.testing.assert_close(output[:, -1], state[0][-1])


def test_lstm_carries_cell_state_c_as_well_as_h() -> None:
    torch.manual_seed(0)
    rnn = make_cell("lstm", input_size=3, hidden_size=5, num_layers=1)
    x = torch.randn(2, 6, 3)
    whole, _ = run_cell(rnn, x, zero_state(rnn, 2))
    first, (h, c) = run_cell(rnn, x[:, :3], zero_state(rnn, 2))
    carried, _ = run_cell(rnn, x[:, 3:], (h, c))
    c_dropped, _ = run_cell(rnn, x[:, 3:], (h, torch.zeros_like(c)))
    torch.testing.assert_close(torch.cat([first, carried], dim=1), whole)
    assert not torch.allclose(c_dropped, whole[:, 3:])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_state_layout_does_not_follow_batch_first(cell: str) -> None:
    torch.manual_seed(0)
    batch_first = make_cell(cell, input_size=3, hidden_size=5, num_layers=2)
    seq_first = type(batch_first)(3, 5, 2, batch_first=False)
    seq_first.load_state_dict(batch_first.state_dict())
    x = torch.randn(4, 7, 3)  # (batch, seq, features)
    out_bf, state_bf = run_cell(batch_first, x, zero_state(batch_first, 4))
    out_sf, state_sf = run_cell(seq_first, x.transpose(0, 1), zero_state(seq_first, 4))
    torch.testing.assert_close(out_bf, out_sf.transpose(0, 1))
    for h_bf, h_sf in zip(state_bf, state_sf, strict=True):
        assert h_bf.shape == (2, 4, 5)  # (layers*directions, batch, hidden) either way
        torch.testing.assert_close(h_bf, h_sf)


def test_bidirectional_output_last_step_is_not_the_final_state() -> None:
    torch.manual_seed(0)
    rnn = make_cell("gru", input_size=3, hidden_size=5, num_layers=1, bidirectional=True)
    output, (h,) = run_cell(rnn, torch.randn(2, 6, 3), zero_state(rnn, 2))
    assert h.shape == (2, 2, 5)
    # Forward half ends at the last step, backward half at the first.
    torch.testing.assert_close(output[:, -1, :5], h[0])
    torch.testing.assert_close(output[:, 0, 5:], h[1])
