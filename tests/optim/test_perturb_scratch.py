"""The direction scratch is sized by what is asked (never beyond one chunk), and the values do not change."""

import torch

from forwardonly.optim.perturb import CHUNK, Directions


def test_scratch_grows_to_the_largest_tensor_and_never_past_a_chunk():
    d = Directions(seed=3)
    small = torch.zeros(1000)
    z_small = [z.clone() for _, _, z in d.chunks(small, step=0, probe=0, param_index=0)]
    assert d.scratch(torch.float32, "cpu", 1).numel() == 1000  # sized by the request, not CHUNK
    big = torch.zeros(CHUNK + 5)
    list(d.chunks(big, step=0, probe=0, param_index=1))
    assert d.scratch(torch.float32, "cpu", 1).numel() == CHUNK
    # a fresh Directions whose scratch starts full-size gives the same values
    d2 = Directions(seed=3)
    d2.scratch(torch.float32, "cpu")
    again = [z.clone() for _, _, z in d2.chunks(small, step=0, probe=0, param_index=0)]
    assert all(torch.equal(a, b) for a, b in zip(z_small, again))
    assert torch.equal(z_small[0], d.full(small, step=0, probe=0, param_index=0))
