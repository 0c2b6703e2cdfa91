"""The combination matrix: its all-pairs cover, then every case against its reference.

tests/matrix.py says what combines with what (seven dimensions, the
exclusions with their reasons) and builds :data:`matrix.CASES`;
tests/matrix_checks.py says what each case is checked against. The cases on
one device run here, one test each. JAX fixes its device count when it is
imported, so the cases on 8 host devices run together in one fresh process
(``JAX_PLATFORMS=cpu``, so also on a machine with a GPU), once per session,
and each has a test here that asserts on its own result.
"""

from __future__ import annotations

import itertools
import json
import pathlib
from typing import Any

import pytest
from fresh_python import once_per_session, run_python
from hypothesis import given, settings
from hypothesis import strategies as st
from matrix import CASES, DIMENSIONS, EXCLUSIONS, Case, Exclusion, all_pairs, excluded
from matrix_checks import check

ONE_DEVICE = [pytest.param(case, id=case.id) for case in CASES if case.devices == 1]
EIGHT_DEVICES = [pytest.param(case, id=case.id) for case in CASES if case.devices == 8]


def _product(dimensions: dict[str, tuple[str, ...]]) -> list[dict[str, str]]:
  return [dict(zip(dimensions, v, strict=True)) for v in itertools.product(*dimensions.values())]


def _pairs(case: dict[str, str]) -> set[tuple[str, ...]]:
  """The values of ``case`` and their pairs, written out apart from matrix.py's."""
  pairs = {(a, case[a], b, case[b]) for a, b in itertools.combinations(case, 2)}
  return pairs | {(a, case[a]) for a in case}


def _assert_covers(cases: list[dict[str, str]], dimensions: dict, exclusions: tuple) -> None:
  allowed = [case for case in _product(dimensions) if not excluded(case, exclusions)]
  assert not any(excluded(case, exclusions) for case in cases)
  covered = set().union(*map(_pairs, cases))
  assert covered == set().union(*map(_pairs, allowed))


def test_the_cases_cover_every_pair_of_values_that_some_allowed_combination_has() -> None:
  _assert_covers([vars(case) for case in CASES], DIMENSIONS, EXCLUSIONS)
  allowed = [case for case in _product(DIMENSIONS) if not excluded(case)]
  sizes = (len(CASES), len(allowed), len(_product(DIMENSIONS)))
  assert len({case.id for case in CASES}) == len(CASES)
  # The README's "Works with" list says how many.
  said = " ".join((pathlib.Path(__file__).parents[1] / "README.md").read_text().split())
  assert f"{sizes[0]:,} cases put every pair" in said
  assert f"{sizes[1]:,} of the product's {sizes[2]:,} combinations" in said
  # The ids parse back into the cases (values hold no dashes).
  assert all(Case(*case.id.split("-")) == case for case in CASES)


def test_every_exclusion_excludes_something_and_leaves_each_value_some_case() -> None:
  product = _product(DIMENSIONS)
  for exclusion in EXCLUSIONS:
    assert set(exclusion.match) <= set(DIMENSIONS)
    assert any(exclusion.excludes(case) for case in product), exclusion.reason
  for dimension, values in DIMENSIONS.items():
    assert {getattr(case, dimension) for case in CASES} == set(values)


@settings(max_examples=40, deadline=None)
@given(
  sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4),
  cut=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=3),
)
def test_all_pairs_covers_any_small_matrix(sizes: list[int], cut: list[tuple[int, int]]) -> None:
  dimensions = {f"d{i}": tuple(f"v{j}" for j in range(n)) for i, n in enumerate(sizes)}
  # Exclude value a of the first dimension with value b of the last one.
  first, last = "d0", f"d{len(sizes) - 1}"
  exclusions = tuple(
    Exclusion({first: frozenset({f"v{a}"}), last: frozenset({f"v{b}"})}, "test") for a, b in cut
  )
  cases = all_pairs(dimensions, exclusions)
  _assert_covers(cases, dimensions, exclusions)
  assert cases == all_pairs(dimensions, exclusions)  # deterministic
  # Never more cases than the product of the two largest dimensions needs, plus slack.
  largest = sorted(sizes)[-2:]
  assert len(cases) <= max(1, largest[0] * largest[-1]) + len(sizes) * 2


@pytest.mark.filterwarnings("ignore:b2=0.999 cannot move a moment stored in bfloat16")
@pytest.mark.parametrize("case", ONE_DEVICE)
def test_case_on_one_device(case: Case, tmp_path: pathlib.Path) -> None:
  check(case, tmp_path)


def _run_eight_device_cases(directory: pathlib.Path) -> dict[str, Any]:
  run = run_python(["tests/matrix_checks.py", str(directory)], host_devices=8)
  started = [line for line in run.stderr.splitlines() if line.startswith("matrix_checks: ")]
  last = started[-1] if started else "before the first case"
  assert run.returncode == 0, f"matrix_checks.py failed ({last}):\n{run.stderr[-4000:]}"
  return {"cases": json.loads(run.stdout.strip().splitlines()[-1])}


@pytest.fixture(scope="module")
def eight_device_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
  return once_per_session(tmp_path_factory, "matrix_8_devices", _run_eight_device_cases)["cases"]


@pytest.mark.parametrize("case", EIGHT_DEVICES)
def test_case_on_eight_devices(case: Case, eight_device_results: dict[str, Any]) -> None:
  result = eight_device_results[case.id]
  assert result["ok"], result["message"]
