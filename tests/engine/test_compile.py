"""torch.compile with the cache: the decision runs outside compiled code, so compiling never guards on the cache's
state. Regional compilation (``block.compile()`` on every block, as diffusers recommends with caches) builds the
same graphs as without the cache; whole-model ``torch.compile(transformer)`` builds a few graphs per block kind,
not per block or step; a second generation compiles nothing new; decisions and outputs equal eager.

Graphs are counted with dynamo's own counters; ``aot_eager`` traces as inductor would, without code generation."""

import pytest
import torch

import teacache_sample_video as tc
from tinyhv.random_models import make_inputs, make_transformer, sample

STEPS, THRESH = 14, 0.3
dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402


def blocks(model):
    return list(model.transformer_blocks) + list(model.single_transformer_blocks)


def generate(call, cache, generations=2, **layers):
    """Two generations; the graphs compiled after each, the outputs, the computed steps of each."""
    graphs, outputs, computed = [], [], []
    for _ in range(generations):
        if cache is not None:
            cache.reset(STEPS)
        with torch.no_grad():
            outputs.append(sample(call, make_inputs(), STEPS))
        graphs.append(counters["stats"]["unique_graphs"])
        computed.append(cache.stats()["computed_steps"] if cache is not None else None)
    return graphs, outputs, computed


def compiled(how, cached, options=None, **layers):
    dynamo.reset()
    counters.clear()
    model = make_transformer(**layers)
    cache = tc.enable_teacache(model, THRESH, **(options or {})) if cached else None
    backend = CompileCounterWithBackend("aot_eager")
    if how == "regional":
        for block in blocks(model):
            block.compile(backend=backend)
        call = model
    else:
        call = torch.compile(model, backend=backend)
    return generate(call, cache, **layers)


@pytest.fixture(scope="module")
def eager():
    model = make_transformer()
    return generate(model, tc.enable_teacache(model, THRESH))


def test_regional_compilation_builds_the_graphs_it_builds_without_the_cache(eager):
    plain_graphs, _, _ = compiled("regional", cached=False)
    graphs, outputs, computed = compiled("regional", cached=True)
    assert graphs[0] == plain_graphs[0] <= 4  # the double block, the single block (two input layouts)
    assert graphs[1] == graphs[0]  # the second generation compiles nothing new
    assert computed == eager[2] and len(computed[0]) < STEPS
    for out, ref in zip(outputs, eager[1]):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_whole_model_compilation_builds_graphs_per_block_kind_not_per_block_or_step(eager):
    """The wrapper's graph break in the block loop makes dynamo run the transformer's forward eagerly and compile
    what it calls frame by frame: the count does not grow with the blocks."""
    graphs, outputs, computed = compiled("whole", cached=True)
    more_blocks, _, _ = compiled("whole", cached=True, num_layers=4, num_single_layers=4)
    assert graphs[1] == graphs[0] == more_blocks[1] <= 12
    assert computed == eager[2]
    for out, ref in zip(outputs, eager[1]):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_whole_call_skip_compiles_the_model_whole():
    """``skip="call"``: the decision wraps the transformer's forward, outside compilation; the forward itself compiles
    as it does without the cache (no graph break in the block loop), once for both generations; decisions and
    outputs equal eager."""
    call = dict(indicator="transformation-rate", skip="call", rule="fitted")
    model = make_transformer()
    eager_graphs, eager_outputs, eager_computed = generate(model, tc.enable_teacache(model, THRESH, **call))
    plain_graphs, _, _ = compiled("whole", cached=False)
    graphs, outputs, computed = compiled("whole", cached=True, options=call)
    assert graphs[1] == graphs[0] == plain_graphs[0]
    assert computed == eager_computed and len(computed[0]) < STEPS
    for out, ref in zip(outputs, eager_outputs):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_the_cache_state_is_never_traced():
    """The hooks and the decision are ``torch.compiler.disable``d: nothing of the cache (its step lists, the
    accumulated change) ends up in a guard, so no recompile limit is reached however many steps run."""
    dynamo.reset()
    counters.clear()
    model = make_transformer()
    cache = tc.enable_teacache(model, THRESH)
    for block in blocks(model):
        block.compile(backend="aot_eager")
    with torch.no_grad():
        for steps in (STEPS, 3 * STEPS):  # a longer generation: more steps, longer lists, same graphs
            cache.reset(steps)
            sample(model, make_inputs(), steps)
            graphs = counters["stats"]["unique_graphs"]
    assert graphs <= 4
    assert not any("recompile" in k.lower() and "limit" in k.lower() for k in counters["unimplemented"])
