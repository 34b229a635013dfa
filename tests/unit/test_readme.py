"""The README's configuration table is generated from the settings module and must stay current."""

from pathlib import Path

from base.settings import markdown_table

ROOT = Path(__file__).resolve().parents[2]


def test_readme_settings_table_matches_settings_module() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings-table:start -->") + len("<!-- settings-table:start -->")
    end = readme.index("<!-- settings-table:end -->")
    assert readme[start:end].strip() == markdown_table(), (
        "README configuration table is stale: regenerate with `python -m base.settings --markdown`"
    )


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
