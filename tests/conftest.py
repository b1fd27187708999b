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


TINY_REPORT = dict(model="tiny", known_only=False, n_facts=3, n_attention=2, steer_prompts=3, steer_tokens=6,
                   fluency_facts=1, gen_tokens=6, cost_facts=1)


@pytest.fixture(scope="session")
def tiny_report(tmp_path_factory):
    """A whole ``lens-memory report --quick`` run on the tiny model (shared by the report tests)."""
    from lens_memory.report.pipeline import ReportConfig, run_report

    out = tmp_path_factory.mktemp("report")
    summary = run_report(out, ReportConfig.quick_config(**TINY_REPORT), progress=False)
    return out, summary


@pytest.fixture(scope="session")
def smollm2():
    """The second embedded model (SmolLM2-135M-Instruct, Llama family), converted on first use, loaded once."""
    from lens_memory.models import load_model

    return load_model("smollm2-135m")
