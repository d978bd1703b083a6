"The project's own consistency: CI entry point, README commands, README rendered from the index notebook."
import json
from pathlib import Path
from nnunet_nb.docs import readme_from_notebook

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    assert 'make test' in (ROOT/'.ci'/'run').read_text()
    readme = (ROOT/'README.md').read_text()
    assert 'make test' in readme and 'make demo' in readme


def test_readme_is_rendered_from_index_notebook():
    assert (ROOT/'README.md').read_text() == readme_from_notebook(ROOT/'nbs'/'index.ipynb'), \
        'README.md is stale: run `make readme` and commit'


def test_every_stage_notebook_exports_a_module():
    for nb in sorted((ROOT/'nbs').glob('[0-9][0-9]_*.ipynb')):
        sources = [''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code']
        modules = [line.split()[-1] for s in sources for line in s.splitlines() if line.startswith('#| default_exp')]
        assert modules, f'{nb.name} exports nothing'
        module = modules[0]
        assert (ROOT/'nnunet_nb'/f'{module}.py').exists(), f'{nb.name}: nnunet_nb/{module}.py missing; run nbdev_export'


def test_docs_processing_runs_clean():
    "nbdev's offline doc processing (what `nbdev_proc_nbs` does without Quarto) succeeds with no warnings."
    import subprocess, sys
    code = 'from nbdev.quarto import refresh_quarto_yml; from nbdev.serve import proc_nbs; refresh_quarto_yml(); proc_nbs()'
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Warning' not in result.stderr, result.stderr[-3000:]
    assert (ROOT/'_proc'/'index.ipynb').exists()
