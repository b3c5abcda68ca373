"""The rules of one batch share what they work out from it (the numbers of its names, each set of
signals' samples: ``FlatBatch.memo``), and a rule matches each name once, whatever table it comes
in. Against the plain code they replaced (kept here): every rule, sharing batches with the others,
gives the metrics it gives alone with a mask over each batch's table worked out name by name. On
adversarial input: tables in a new order every batch, names that come and go, samples out of
order, NaN and infinite times and values, one sample, empty batches."""

from __future__ import annotations

import fnmatch
from unittest import mock

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_rules_fast import VALUES, SpreadReference, StaleReference, ZScoreReference, rule, same_metrics

from telemetry.edge.messages import FlatBatch
from telemetry.edge.rules import base as rules_base
from telemetry.edge.rules.base import by_key_then_time
from telemetry.edge.rules.limit import LimitEvaluator
from telemetry.edge.rules.rate import RateEvaluator

NAMES = ("A.x", "A.y", "B.z", "C.v0", "C.v1", "D.w")


class Plain:
    """The rule's names and samples as they were taken: a mask over the batch's table, each name
    matched again, nothing kept or shared."""

    rule: rules_base.Rule

    def _hit(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.rule.signals)

    def name_mask(self, names, memo=None):
        return np.array([self._hit(n) for n in names], dtype=bool)

    def per_name(self, names, number, memo=None):
        return np.array([number(n) if self._hit(n) else -1 for n in names], dtype=np.int64)

    def select(self, batch, ordered=False):
        hits = self.name_mask(batch.names)
        if not hits.any():
            return None
        mask = hits[batch.ids]
        sel = batch.ids[mask], batch.t[mask], batch.v[mask]
        return by_key_then_time(*sel) if ordered else sel


class PlainLimit(Plain, LimitEvaluator):
    pass


class PlainRate(Plain, RateEvaluator):
    pass


class PlainStale(Plain, StaleReference):
    pass


class PlainSpread(Plain, SpreadReference):
    pass


class PlainZScore(Plain, ZScoreReference):
    pass


RULES = [
    (dict(name="lo", kind="limit", signals="C.*", min=-1.0), PlainLimit),
    (dict(name="hi", kind="limit", signals="C.*", max=1.0), PlainLimit),  # the same signals: one selection
    (dict(name="one", kind="limit", signals=["B.z", "A.y"], max=2.0), PlainLimit),
    (dict(name="jump", kind="rate", signals="A.*", max_rate=3.0), PlainRate),
    (dict(name="quiet", kind="stale", signals=["A.*", "B.*", "D.*"], timeout=1.5), PlainStale),
    (dict(name="quiet-each", kind="stale", signals="*", timeout=0.7, scope="signal"), PlainStale),
    (dict(name="imbalance", kind="spread", signals="C.*", max_spread=1.0), PlainSpread),
    (dict(name="odd", kind="zscore", signals=["A.*", "C.*"], threshold=2.0, baseline=6, warmup=3), PlainZScore),
]


@st.composite
def batches(draw):
    """Each batch: some of the names in any order (a new table more often than not), each signal's
    samples together (or all of them shuffled), times rising, repeated, going back or NaN."""
    out = []
    t0 = 0.0
    for _ in range(draw(st.integers(1, 6))):
        table = tuple(draw(st.permutations(NAMES))[:draw(st.integers(0, len(NAMES)))])
        ids, ts, vs = [], [], []
        for i, _name in enumerate(table):
            n = draw(st.integers(1, 8))
            steps = draw(st.lists(st.sampled_from([0.0, 0.25, 1.0, 2.5, -0.5]), min_size=n, max_size=n))
            t = t0 + np.cumsum(steps)
            if draw(st.integers(0, 9)) == 0:
                t[draw(st.integers(0, n - 1))] = draw(st.sampled_from([np.nan, np.inf]))
            ids += [i] * n
            ts += t.tolist()
            vs += draw(st.lists(VALUES, min_size=n, max_size=n))
        ids_a, t_a, v_a = np.array(ids, np.int64), np.array(ts, float), np.array(vs, float)
        if len(ids_a) > 1 and draw(st.integers(0, 4)) == 0:  # not one run per signal: no layout
            order = np.array(draw(st.permutations(range(len(ids_a)))))
            ids_a, t_a, v_a = ids_a[order], t_a[order], v_a[order]
        out.append(FlatBatch(table, ids_a, t_a, v_a))
        t0 += 3.0
    return out


def copy(batch: FlatBatch) -> FlatBatch:
    return FlatBatch(tuple(batch.names), batch.ids.copy(), batch.t.copy(), batch.v.copy())


@given(batches(), st.sampled_from([8192, 0, 5]), st.data())
@settings(max_examples=50, deadline=None)
def test_rules_sharing_a_batch_give_what_each_gives_alone(sequence, runs_from, data):
    rules = [rule(**kw) for kw, _ in RULES]
    fast = [r.evaluator() for r in rules]
    plain = [cls(r) for r, (_, cls) in zip(rules, RULES, strict=True)]
    with mock.patch.object(rules_base, "_RUNS_FROM", runs_from), np.errstate(all="ignore"):
        for batch in sequence:
            now = float(np.nanmax(batch.t[np.isfinite(batch.t)], initial=0.0)) + data.draw(st.sampled_from([0.0, 2.0]))
            for f, p in zip(fast, plain, strict=True):
                hot = data.draw(st.booleans())
                same_metrics(f.metrics(batch, {}, now, hot), p.metrics(copy(batch), {}, now, hot))


@given(st.lists(st.permutations(NAMES + ("E.q", "x*")), min_size=1, max_size=8), st.integers(2, 40))
@settings(max_examples=30, deadline=None)
def test_a_rule_matches_each_name_as_fnmatch_does_in_any_table(tables, cap):
    """Also when the shared numbering is full and starts again (a new generation)."""
    r = rule(kind="limit", signals=["A.*", "x[*]", "?.v1"], max=1.0)
    numbers: dict[str, int] = {}
    with mock.patch.object(rules_base, "_MAX_NAMES", cap):
        fast = r.evaluator()
        for table in tables:
            for names in (tuple(table), tuple(table[::2]), ()):
                want = np.array([any(fnmatch.fnmatchcase(n, p) for p in r.signals) for n in names], dtype=bool)
                np.testing.assert_array_equal(fast.name_mask(names), want)
                got = fast.per_name(names, lambda n: numbers.setdefault(n, len(numbers)))
                np.testing.assert_array_equal(got, [numbers[n] if w else -1 for n, w in zip(names, want, strict=True)])


def test_a_shared_selection_cannot_be_written_to():
    batch = FlatBatch(("A.x",), np.zeros(3, np.int64), np.arange(3.0), np.ones(3))
    sel = rule(kind="limit", signals="A.*", max=1.0).evaluator().select(batch)
    assert sel is not None
    for column in sel:
        assert not column.flags.writeable
    assert rule(kind="rate", signals="A.x", max_rate=1.0).evaluator().select(batch) is sel  # shared, not made again


def test_the_spread_of_a_batch_whose_signals_are_not_together_takes_each_signals_last_sample_of_an_instant():
    # hypothesis found it: C.v1's samples at t=0 are 0, then NaN (which changes nothing), with
    # C.v0's between them; the last of C.v1 at t=0 is the NaN, so C.v1 is not known there yet
    batch = FlatBatch(("C.v0", "C.v1", "B.z"), np.array([0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 0, 1, 2]),
                      np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, .5, 0, 0, .25, np.nan]),
                      np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, np.inf, np.nan, 0, 0, 0.]))
    ((imbalance, plain),) = [(rule(**kw), cls) for kw, cls in RULES if kw["name"] == "imbalance"]
    with np.errstate(all="ignore"):
        got = imbalance.evaluator().metrics(batch, {}, 1.0, False)
        same_metrics(got, plain(imbalance).metrics(copy(batch), {}, 1.0, False))
    assert got is not None and list(got.t) == [0.25, 0.5, 1.0]
