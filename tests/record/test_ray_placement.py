"""Where a Ray actor loads its model: on the GPU Ray gave it (``cuda:0`` inside the actor, bf16), else the CPU.

The Ray tests start small clusters in the test: ``ray.init(num_cpus=2, num_gpus=2)`` declares
two logical GPUs on this (CPU) machine, so Ray gives each of the executor's two actors one
of them; each actor is asked where it would load ``smollm2`` (``_Worker.placement``), which
resolves the ``ModelRef`` without loading anything, so no CUDA is touched. Without GPUs the
actors resolve to the CPU. Without Ray installed those tests are skipped (reason below); the
pure ``ModelRef.for_ray_actor`` tests run anyway.
"""

from __future__ import annotations

import pytest

from skips import needs

from lens.model import ModelRef

try:
    import ray
except ImportError:  # the optional extra is not installed
    ray = None

pytestmark = pytest.mark.ray
needs_ray = needs("ray")


# --- ModelRef.for_ray_actor, no Ray ----------------------------------------------------------------
@pytest.mark.parametrize("gpu_ids", [[0], [1], [3, 5], ["2"]])
def test_an_actor_with_gpus_loads_on_its_first_gpu_in_bf16(gpu_ids):
    ref = ModelRef("smollm2").for_ray_actor(gpu_ids)
    assert ref == ModelRef("smollm2", device="cuda:0", dtype="bfloat16")  # Ray's CUDA_VISIBLE_DEVICES: cuda:0


@pytest.mark.parametrize("gpu_ids", [[], ()])
def test_an_actor_without_gpus_loads_on_the_cpu(gpu_ids):
    assert ModelRef("smollm2").for_ray_actor(gpu_ids) == ModelRef("smollm2", device="cpu")  # dtype auto: fp32


def test_what_the_ref_says_is_kept():
    assert ModelRef("smollm2", dtype="float16").for_ray_actor([0]) == ModelRef("smollm2", device="cuda:0",
                                                                               dtype="float16")
    assert ModelRef("smollm2", dtype="float16").for_ray_actor([]) == ModelRef("smollm2", device="cpu",
                                                                              dtype="float16")
    for ref in (ModelRef("smollm2", device="cpu"), ModelRef("smollm2", device="cuda:1", dtype="float32"),
                ModelRef("smollm2", device_map="auto")):
        assert ref.for_ray_actor([0]) == ref and ref.for_ray_actor([]) == ref


# --- actors on a cluster -----------------------------------------------------------------------------
def _start(**resources):
    if ray.is_initialized():
        ray.shutdown()
    ray.init(include_dashboard=False, log_to_driver=False, **resources)


@pytest.fixture
def gpu_cluster():
    _start(num_cpus=2, num_gpus=2)  # logical GPUs: nothing here touches CUDA
    yield ray
    ray.shutdown()


@pytest.fixture
def cpu_cluster():
    _start(num_cpus=2)
    yield ray
    ray.shutdown()


def _placements(ex, model) -> list[tuple[list, ModelRef]]:
    return ray.get([a.placement.remote(model) for a in ex.actors])


@needs_ray
def test_each_actor_gets_its_own_gpu_and_loads_on_it_in_bf16(gpu_cluster):
    from lens.record._executor import make_executor

    ex = make_executor("ray", progress=False)  # one actor per GPU
    try:
        assert ex.workers == 2 and ex.gpus_per_actor == 1
        got = _placements(ex, ModelRef("smollm2"))
        ids = [gpu_ids for gpu_ids, _ in got]
        assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 2  # distinct GPUs
        assert {int(i[0]) for i in ids} == {0, 1}
        assert [ref for _, ref in got] == [ModelRef("smollm2", device="cuda:0", dtype="bfloat16")] * 2
        # a plain name is a ref too; an explicit dtype is kept
        assert [ref for _, ref in _placements(ex, "smollm2")] == [ModelRef("smollm2", "cuda:0", "bfloat16")] * 2
        assert [ref for _, ref in _placements(ex, ModelRef("smollm2", dtype="float16"))] == \
            [ModelRef("smollm2", device="cuda:0", dtype="float16")] * 2
    finally:
        ex.close()


@needs_ray
def test_actors_without_gpus_load_on_the_cpu(cpu_cluster):
    from lens.record._executor import make_executor

    ex = make_executor("ray", workers=2, progress=False)
    try:
        assert ex.workers == 2 and ex.gpus_per_actor == 0
        assert _placements(ex, ModelRef("smollm2")) == [([], ModelRef("smollm2", device="cpu"))] * 2
        assert _placements(ex, ModelRef("smollm2", dtype="bfloat16")) == \
            [([], ModelRef("smollm2", device="cpu", dtype="bfloat16"))] * 2
    finally:
        ex.close()
