"""config/sections.py: the kernels section is written out field by field, and must offer exactly what the kernel
registry holds."""
from __future__ import annotations

import dataclasses
import typing

import kernels
from config.sections import KernelsConfig


def test_the_kernels_section_has_one_field_per_registered_group_offering_its_implementations():
    fields = {f.name: f for f in dataclasses.fields(KernelsConfig)}
    assert set(fields) == set(kernels.REGISTRY), "add or remove the group's field in config/sections.py KernelsConfig"
    for name, op in kernels.REGISTRY.items():
        offered = typing.get_args(typing.get_type_hints(KernelsConfig)[name])
        assert sorted(offered) == sorted(("auto", *op.implementations)), name
        assert fields[name].default == "auto", name
