"""The ``chat`` prompt set: short instructions of the kinds a user asks a small instruct model
(explanations, how-tos, rewriting, lists, small code requests), written for this benchmark.

Each is one user turn; ``prompts.render_chat`` puts it through the bundle's chat template
(with the template's own default system turn, if it has one) and ends it with the assistant
header, exactly as ``stagedx serve`` does for ``/v1/chat/completions``.
"""

from __future__ import annotations

CHAT_INSTRUCTIONS: tuple[tuple[str, str], ...] = (
    ("chat/explain-photosynthesis", "Explain how photosynthesis works in simple terms."),
    ("chat/explain-tcp-udp", "What is the difference between TCP and UDP? Keep it short."),
    ("chat/explain-inflation", "Explain what inflation is and why prices go up over time."),
    ("chat/explain-recursion", "Explain recursion to a beginner programmer, with an everyday example."),
    ("chat/howto-boil-egg", "How do I boil an egg so that the yolk stays soft?"),
    ("chat/howto-git-branch", "How do I create a new branch in git and switch to it?"),
    ("chat/howto-sleep", "Give me some practical tips to fall asleep faster."),
    ("chat/howto-plant", "How often should I water a cactus kept indoors?"),
    (
        "chat/rewrite-formal",
        "Rewrite this message to sound more formal: hey, can't make it to the meeting tomorrow, "
        "something came up. let's move it to friday?",
    ),
    (
        "chat/rewrite-simple",
        "Rewrite this sentence so a ten-year-old can understand it: The mitochondria is the "
        "organelle responsible for producing most of the chemical energy needed by the cell.",
    ),
    (
        "chat/summarize",
        "Summarize in two sentences: The city council voted on Tuesday to extend the bike lane "
        "network by twelve kilometers over the next three years. Supporters said the plan would "
        "reduce traffic and improve safety, while some shop owners worried about losing parking "
        "spaces in front of their stores.",
    ),
    ("chat/list-fruits", "List five fruits that are high in vitamin C."),
    ("chat/list-packing", "Make a packing list for a three-day camping trip."),
    ("chat/list-interview", "List some common questions asked in a job interview."),
    ("chat/email-thanks", "Write a short thank-you email to a colleague who helped me finish a project."),
    ("chat/story", "Write a short story about a robot who learns to paint."),
    ("chat/code-reverse", "Write a Python function that reverses a string."),
    ("chat/code-primes", "Write a Python function that returns all prime numbers below n."),
    ("chat/code-sql", "Write an SQL query that returns the ten customers with the highest total order amount."),
    ("chat/code-explain", "What does this Python code do? print(sum(x * x for x in range(10)))"),
)
