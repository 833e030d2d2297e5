"""The documentation cannot drift: generated text is current, the README short."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parent.parent
pytestmark = pytest.mark.skipif(not (ROOT / "docs").exists(),
                                reason="outside the source tree")


@pytest.fixture(scope="module")
def results():
  # The renderers are the examples' own (their `markdown`): the examples extra.
  pytest.importorskip("flax")
  pytest.importorskip("tqdm")
  from docs import results
  return results


def test_readme_headline_table_is_generated_from_the_records(results):
  readme = results.README.read_text()
  assert results.readme_with_headline(readme) == readme, (
      "README.md's headline table is stale: run python -m docs.results")


def test_benchmarks_readme_is_generated_from_the_records(results):
  assert results.benchmarks_readme() == results.BENCHMARKS_README.read_text(), (
      "benchmarks/README.md is stale: run python -m docs.results")


def test_every_record_renders_and_every_record_family_has_a_section(results, tmp_path):
  (tmp_path / "results").mkdir()
  results.write_pages(tmp_path)
  for section in results.SECTIONS:
    assert results._records(section), section.page
    assert (tmp_path / "results" / f"{section.page}.md").read_text()
  rendered = {p for s in results.SECTIONS for p in results._records(s)}
  # Per-seed records are rendered through the curve that aggregates them.
  top_level = {p for p in results.RECORDS.rglob("*.json")
               if not re.search(r"/(seed\d+|paper|quarter\w*|recipe\w*)/", str(p))}
  assert top_level <= rendered, sorted(top_level - rendered)


def test_readme_is_short_and_states_the_two_commands():
  readme = (ROOT / "README.md").read_text()
  assert len(readme.splitlines()) <= 200
  assert "pip install -e '.[test,examples]' && python -m examples.quickstart" in readme
  assert "```bash\npytest\n```" in readme


def test_every_guide_and_page_is_in_the_toctree():
  docs = ROOT / "docs"
  index = (docs / "index.md").read_text()
  for guide in (docs / "guides").glob("*.md"):
    assert f"guides/{guide.stem}" in index, guide.name
