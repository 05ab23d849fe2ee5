"""Hypothesis strategies for the chunker's property tests."""

from __future__ import annotations

from hypothesis import strategies as st

UNICODE_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
        st.sampled_from(list("。！？\n #向量検索Москва😀👩‍🚀éa")),
    ),
    max_size=400,
)
"""Scripts of several widths in UTF-8 (1-4 bytes), combining marks, emoji, CJK, RTL, controls, with the
sentence ends, headings and line breaks the chunker cuts at mixed in."""
