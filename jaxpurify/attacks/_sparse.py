"""Skeleton: signatures of contract 1 (TEAM.md); implementation follows."""

from jaxpurify.attacks._attack import Attack


def sparse_trojan(key, apply_fn, params, data, *, target=None, trigger=None, **hyper) -> Attack:
    raise NotImplementedError("sparse_trojan: not implemented yet")


def channel_trojan(key, apply_fn, params, data, *, target=None, trigger=None, **hyper) -> Attack:
    raise NotImplementedError("channel_trojan: not implemented yet")
