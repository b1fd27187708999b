import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny():
    from lens_memory.models import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def gemma():
    """The embedded model, converted into the user cache on first use, loaded once per session."""
    from lens_memory.models import load_model

    return load_model("gemma-3-270m")
