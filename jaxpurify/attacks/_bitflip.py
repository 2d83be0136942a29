"""Skeleton: signatures of contract 1 (TEAM.md); implementation follows."""

from jaxpurify.attacks._attack import Attack


def pbfa(key, apply_fn, params, data, *, target=None, trigger=None, **hyper) -> Attack:
    raise NotImplementedError("pbfa: not implemented yet")


def bit_trojan(key, apply_fn, params, data, *, target=None, trigger=None, **hyper) -> Attack:
    raise NotImplementedError("bit_trojan: not implemented yet")
