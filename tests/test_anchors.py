"""Unique heading ids and the table of contents of the report's HTML."""
import re

from lib.experiments.cells import slug
from lib.report.anchors import unique_anchors, with_contents


def _heading(level, text):
    nb_id = text.replace(" ", "-")  # as nbconvert makes them: duplicates share an id
    return f'<h{level} id="{nb_id}">{text}<a class="anchor-link" href="#{nb_id}">¶</a></h{level}>'


BODY = "\n".join([
    _heading(1, "Report"), "<p>intro</p>",
    _heading(2, "Follow-up · 后续"),
    _heading(3, "Search - 1 · 搜索 - 1"), _heading(4, "CDG plot"), _heading(5, "Dim = 8"),
    _heading(4, "NES plot"), _heading(5, "Dim = 8"), _heading(6, "Sample = 500"),
    _heading(3, "Search - 2 · 搜索 - 2"), _heading(4, "CDG plot"), _heading(5, "Dim = 8"),
    _heading(2, "Run manifest"),
])


def test_slug_keeps_the_english_part():
    assert slug("Search (epsilon &amp; sigma) - 1 · 搜索超参 - 1") == "search-epsilon-sigma-1"
    assert slug("· 问题") == "section"


def test_ids_are_unique_and_links_follow_them():
    out, headings = unique_anchors(BODY)
    ids = re.findall(r'<h\d id="([^"]*)"', out)
    assert len(ids) == len(set(ids)) == 12
    assert re.findall(r'href="#([^"]*)"', out) == ids  # each heading's anchor link points at its own id
    assert [h.id for h in headings if h.text == "Dim = 8"] == [
        "search-1--cdg-plot--dim-8", "search-1--nes-plot--dim-8", "search-2--cdg-plot--dim-8"]
    assert headings[7].id == "search-1--nes-plot--dim-8--sample-500"


def test_table_of_contents_before_the_first_section():
    out = with_contents(BODY)
    toc = out.index('<nav class="toc">')
    assert out.index("<p>intro</p>") < toc < out.index('<h2 id="follow-up">')
    links = re.findall(r'<a href="#([^"]*)">', out[toc:out.index("</nav>")])
    assert links == ["follow-up", "search-1", "search-1--cdg-plot", "search-1--nes-plot", "search-2",
                     "search-2--cdg-plot", "run-manifest"]  # levels 2 to 4
    ids = set(re.findall(r'\sid="([^"]*)"', out))
    assert all(link in ids for link in re.findall(r'href="#([^"]*)"', out))


def test_runs_are_listed_in_natural_order():
    from lib.report.build import natural_key

    ids = ["toy__num_dim-16", "toy__num_dim-8", "toy__num_dim-64", "toy__num_dim-32", "thin_resnet__c-16",
           "thin_resnet__c-8"]
    assert sorted(ids, key=natural_key) == ["thin_resnet__c-8", "thin_resnet__c-16", "toy__num_dim-8",
                                            "toy__num_dim-16", "toy__num_dim-32", "toy__num_dim-64"]
