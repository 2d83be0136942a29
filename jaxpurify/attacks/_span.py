"""Skeleton: signatures of contract 1 (TEAM.md); implementation follows."""

from jaxpurify.attacks._attack import Attack


def span_trojan(key, apply_fn, params, data, *, target=None, trigger=None, **hyper) -> Attack:
    raise NotImplementedError("span_trojan: not implemented yet")
