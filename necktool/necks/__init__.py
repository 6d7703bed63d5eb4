"""The neck families' modules; each family lives in its own module here.

A family's module defines an :class:`~necktool.necks.base.Neck` subclass built from a
:class:`~necktool.spec.neck_spec.NeckSpec` and is registered by import path in
:mod:`necktool.spec.families`, so this package needs no list of them.
"""
