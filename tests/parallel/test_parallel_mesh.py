"""The device mesh's shape: ('pp', 'dp', 'cp', 'tp') outermost first, dp what the others leave."""

import pytest

from groundup.parallel.config import ParallelConfig
from groundup.parallel.env import mesh_shape


def test_the_mesh_keeps_dp_and_the_dimensions_used_in_order():
    assert mesh_shape(1) == {"dp": 1}
    assert mesh_shape(4, tensor_parallel=2) == {"dp": 2, "tp": 2}
    assert mesh_shape(16, pipeline_parallel=2, context_parallel=2, tensor_parallel=2) == {
        "pp": 2, "dp": 2, "cp": 2, "tp": 2}
    assert list(mesh_shape(8, pipeline_parallel=4, context_parallel=2)) == ["pp", "dp", "cp"]


def test_a_mesh_whose_product_does_not_divide_the_world_names_the_settings():
    with pytest.raises(ValueError, match=r"pipeline_parallel=2 x context_parallel=3 x tensor_parallel=1 = 6 "
                                         r"does not divide the world size 8"):
        mesh_shape(8, pipeline_parallel=2, context_parallel=3)


@pytest.mark.parametrize("name", ["pipeline_parallel", "context_parallel", "expert_parallel"])
def test_degrees_below_one_are_refused(name):
    with pytest.raises(ValueError, match=f"parallel.{name} must be >= 1"):
        ParallelConfig(**{name: 0})


def test_tensor_parallelism_refuses_a_mixture_of_experts_by_name():
    from groundup.model.config import ModelConfig
    from groundup.parallel.apply_tp import check_tp

    moe = ModelConfig.llama(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, moe_experts=4)
    with pytest.raises(ValueError, match=r"model.moe_experts=4\) is split by parallel.expert_parallel"):
        check_tp(moe, 2)
    check_tp(ModelConfig.llama(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32), 2)
