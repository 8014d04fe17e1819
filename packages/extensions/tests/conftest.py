import pytest
import torch

# tiny shapes: one thread is faster than fighting over shared cores
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
