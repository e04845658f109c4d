"""The README and docs/ pages: every relative link resolves to a file of the project, and every
#anchor to a heading of the page it names (GitHub's heading slugs)."""

import glob
import os
import re

import pytest

from conftest import PROJECT

PAGES = [os.path.join(PROJECT, 'README.md')] + sorted(glob.glob(os.path.join(PROJECT, 'docs', '*.md')))
LINK = re.compile(r'(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)')


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r'[`*_]', '', heading.strip().lower())
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(path):
    with open(path, encoding='utf-8') as f:
        text = re.sub(r'```.*?```', '', f.read(), flags=re.S)  # no headings inside code blocks
    return {slug(m.group(1)) for m in re.finditer(r'^#{1,6} (.+)$', text, flags=re.M)}


def links(path):
    with open(path, encoding='utf-8') as f:
        text = re.sub(r'```.*?```', '', f.read(), flags=re.S)
    return [a or b for a, b in LINK.findall(text)]


def test_there_are_pages_with_links():
    assert len(PAGES) >= 7
    assert sum(len(links(p)) for p in PAGES) > 20


@pytest.mark.parametrize('page', PAGES, ids=[os.path.relpath(p, PROJECT) for p in PAGES])
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        if re.match(r'[a-z]+:', target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition('#')
        full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(full):
            broken.append(f'{target}: no such file')
        elif anchor and full.endswith('.md') and anchor not in anchors(full):
            broken.append(f'{target}: no heading with that anchor')
    assert not broken, broken


def test_readme_is_short():
    assert os.path.getsize(os.path.join(PROJECT, 'README.md')) <= 16 * 1024


def test_the_root_holds_the_entry_points_and_the_story_files_stay_short():
    """docs/layout.md: commands at the root, machinery in nanogpt/; model.py and train.py readable."""
    import ast
    root = {f for f in os.listdir(PROJECT) if f.endswith('.py')}
    assert root == {'model.py', 'train.py', 'sample.py', 'configurator.py', 'bench.py', 'export_hf.py', 'plot.py'}
    for name, most in (('model.py', 380), ('train.py', 420)):
        source = open(os.path.join(PROJECT, name)).read()
        assert source.count('\n') <= most, name
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 120, (name, node.name)
