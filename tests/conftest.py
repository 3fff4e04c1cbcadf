import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
# The tests mirror the package (tests/nn/ for pmf.nn, ...; test_layout.py keeps it so). Modules in every
# folder import the shared helpers.py as ``from helpers import ...``, which needs this folder on sys.path.
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
from helpers import FIXTURES  # noqa: E402


@pytest.fixture
def one_thread():
    """One torch thread for the test: small CPU work runs several times faster on one thread than on a busy
    shared pool. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not (FIXTURES / "net_tiny.pt").exists():
        pytest.fail(f"official fixtures missing at {FIXTURES} (they ship in tests/fixtures/official; "
                    "PMF_FIXTURES overrides the path)")
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_release_sd(fixtures_dir):
    return torch.load(fixtures_dir / "net_tiny.pt", weights_only=True)


@pytest.fixture
def tiny_model(tiny_release_sd):
    import pmf

    model = pmf.build_model("pMF-Tiny/4")
    return pmf.load_release_state_dict(model, tiny_release_sd)


@pytest.fixture
def fake_offline(monkeypatch):
    """The offline score without training its classifier: records the images it was given."""
    import pmf.evaluation.offline_score

    seen = []

    def offline_scores(images, labels, *, dataset="mnist-5k", **kw):
        seen.append(images)
        return {"accuracy": 0.5, "frechet": float(len(seen)), "frechet_real_floor": 0.1, "accuracy_real_floor": 0.9,
                "frechet_class_means": 2.0, "dataset": dataset}

    monkeypatch.setattr(pmf.evaluation.offline_score, "offline_scores", offline_scores)
    return seen
