"""Flagged-span highlighting escapes the sample text and maps spans onto chat messages."""

from core.datasets.review import highlight_html


def test_escapes_and_marks():
    text = "<script>x</script> Mail: a@b.de & mehr"
    start = text.index("a@b.de")
    out = highlight_html(text, [(start, start + 6, "pii_email")])
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert '<mark title="pii_email">a@b.de</mark>' in out
    assert out.endswith(" &amp; mehr")


def test_offsets_of_a_later_message_and_overlaps():
    joined = "Frage?\n\nAntwort mit a@b.de"
    start = joined.index("a@b.de")
    spans = [(start, start + 6, "pii_email"), (start + 2, start + 4, "other")]
    out = highlight_html("Antwort mit a@b.de", spans, offset=8)
    assert out == 'Antwort mit <mark title="pii_email">a@b.de</mark>'
    assert highlight_html("Frage?", spans, offset=0) == "Frage?"
    assert (
        highlight_html('a"b\nc', [(0, 3, 'x"y')]) == '<mark title="x&quot;y">a&quot;b</mark><br>c'
    )
