"""Prompt templates: the one place that turns a document into a model prompt.

The TL;DR template is the one of ``CarperAI/openai_summarize_tldr`` (its ``prompt`` field),
so SFT rows of the real dataset and comparisons rebuilt from
``openai/summarize_from_feedback`` give identical prompts. Responses are appended after a
single space.
"""

TLDR_TEMPLATE = "SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"
NEWS_TEMPLATE = "ARTICLE: {article}\nTL;DR:"


def tldr_prompt(subreddit: str, title: str, post: str) -> str:
    return TLDR_TEMPLATE.format(subreddit=subreddit, title=title, post=post)


def news_prompt(article: str) -> str:
    return NEWS_TEMPLATE.format(article=article)


def response_text(summary: str) -> str:
    """The exact continuation a model is trained on and scored on: one leading space."""
    return " " + summary.strip()
