"""One definition of a block: the stack found in the model and the blocks read from parameter names agree."""

import pytest

from forwardonly.blocks import block_groups, block_key, find_blocks
from forwardonly.models.tiny import ARCHS, tiny_model


@pytest.mark.parametrize("arch", ARCHS)
def test_names_and_structure_give_the_same_blocks(arch):
    model, _ = tiny_model(arch)
    stack_name, stack = find_blocks(model)
    by_structure = {}
    for i, block in enumerate(stack):
        for n, _ in block.named_parameters():
            by_structure[f"{stack_name}.{i}.{n}"] = i
    keys = {name: block_key(name) for name, _ in model.named_parameters()}
    in_blocks = {name: key for name, key in keys.items() if name in by_structure}
    assert in_blocks, arch
    # every parameter of stack entry i is in block "<stack>.i", and nothing else is
    for name, i in by_structure.items():
        assert keys[name].endswith(f".{i}") and keys[name].split(".")[0] == stack_name.rsplit(".", 1)[-1]
    outside = {key for name, key in keys.items() if name not in by_structure}
    assert not outside & set(in_blocks.values())
    groups = block_groups(list(model.named_parameters()))
    assert len([g for g in groups if g["block"] in set(in_blocks.values())]) == len(stack)


def test_a_model_without_a_stack_is_named():
    import torch

    with pytest.raises(ValueError, match="no stack of repeated blocks"):
        find_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))
