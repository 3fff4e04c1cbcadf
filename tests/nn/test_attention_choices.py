"""The attention choices of pmf.nn.attention belong to a computation, not to the process: a thread (the server's
batcher, a training thread) keeps its own choice while another thread changes its, and ``torch.compile``
(fullgraph) honours the choice of the calling code without a graph break."""

import threading

import pytest
import torch

from helpers import network_args, random_model
from pmf.nn.attention import (
    attention_backend,
    current_attention_backend,
    current_tangent_attention,
    tangent_attention,
)

pytestmark = pytest.mark.usefixtures("one_thread")
CHOICES = [(attention_backend, current_attention_backend, "sdpa", "math"),
           (tangent_attention, current_tangent_attention, "math", "triton")]


def run_threads(*targets):
    errors = []

    def guarded(fn):
        try:
            fn()
        except BaseException as err:  # noqa: BLE001  (reported by the test's thread)
            errors.append(err)

    threads = [threading.Thread(target=guarded, args=(fn,)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)


@pytest.mark.parametrize("select, current, default, other", CHOICES)
def test_a_thread_does_not_see_another_threads_choice(select, current, default, other):
    """A selects ``other``; B, meanwhile, still has the default. Then B selects ``other`` too, A leaves its block,
    and B, still inside its own, keeps ``other`` (a process-wide switch would restore A's "previous" for both)."""
    step = threading.Barrier(2, timeout=30)  # a thread that fails breaks it for the other
    seen = {}

    def a():
        with select(other):
            step.wait()  # 1: A is inside its block
            step.wait()  # 2: B has looked and entered its own block
        step.wait()  # 3: A has left
        seen["a after"] = current()

    def b():
        step.wait()  # 1
        seen["b while a"] = current()
        with select(other):
            step.wait()  # 2
            step.wait()  # 3
            seen["b inside after a left"] = current()
        seen["b after"] = current()

    run_threads(a, b)
    assert seen == {"b while a": default, "b inside after a left": other, "b after": default, "a after": default}


def test_a_new_thread_starts_with_the_defaults():
    seen = []
    with attention_backend("math"), tangent_attention("triton"):
        run_threads(lambda: seen.append((current_attention_backend(), current_tangent_attention())))
        assert (current_attention_backend(), current_tangent_attention()) == ("math", "triton")
    assert seen == [("sdpa", "math")]


def test_a_bad_choice_is_refused_and_changes_nothing():
    with pytest.raises(ValueError, match="attention backend must be 'sdpa' or 'math', got 'flash'"):
        with attention_backend("flash"):
            pass
    assert current_attention_backend() == "sdpa"


def test_compiled_network_follows_the_callers_backend_without_a_graph_break():
    """torch.compile(fullgraph=True) reads the choice inside forward: SDPA by default, the math attention inside
    ``attention_backend("math")`` (a guard, so a recompilation), the same numbers as the eager network."""
    model = random_model(seed=1, depth=2, aux_head_depth=1, v_head=False)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return gm.forward

    compiled = torch.compile(model, backend=backend, fullgraph=True)
    args = network_args(torch.randn(2, 3, 32, 32), [1, 7])
    with torch.no_grad():
        want = model(*args, heads="u").x_u
        got_sdpa = compiled(*args, heads="u").x_u
        with attention_backend("math"):
            got_math = compiled(*args, heads="u").x_u
    sdpa = [any("scaled_dot_product_attention" in t for t in g) for g in graphs]
    assert sdpa == [True, False]  # one graph per choice: fullgraph means no break
    torch.testing.assert_close(got_sdpa, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_math, want, rtol=1e-5, atol=1e-5)


def test_threads_leaving_out_of_order_leave_the_compiled_choice_at_the_default():
    """On torch before 2.14 a compiled network reads the choice's mirror: thread A enters "math", thread B
    enters "sdpa", A leaves, B leaves; the mirror must not stay at A's "math" (B's outer value when it entered)."""
    from pmf.nn.attention import _BACKEND

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a():
        with attention_backend("math"):
            a_in.set()
            b_in.wait(30)
        a_out.set()

    def b():
        a_in.wait(30)
        with attention_backend("sdpa"):
            b_in.set()
            a_out.wait(30)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _BACKEND.mirror == "sdpa" and current_attention_backend() == "sdpa"
