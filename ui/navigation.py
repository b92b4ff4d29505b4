"""The page registry: every page, its title and the permission needed to see it.

app.py builds `st.navigation` from this list, so a role never sees a page it may not use
(and each page calls core, which checks the permission again).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PageEntry:
    path: str
    title: str
    icon: str
    permission: str
    section: str = "Workbench"
    default: bool = False


PAGES: list[PageEntry] = [
    PageEntry("pages/home.py", "Home", ":material/home:", "system:read", default=True),
    PageEntry("pages/corpus.py", "Corpus", ":material/library_books:", "corpus:search"),
    PageEntry("pages/datasets.py", "Datasets", ":material/dataset:", "datasets:read"),
    PageEntry("pages/review.py", "Review", ":material/rule:", "datasets:review"),
    PageEntry("pages/training.py", "Training", ":material/model_training:", "training:read"),
    PageEntry("pages/chat.py", "Chat", ":material/chat:", "chat:use"),
    PageEntry("pages/audit.py", "Audit log", ":material/receipt_long:", "audit:read", "Admin"),
    PageEntry("pages/admin.py", "Users", ":material/group:", "users:manage", "Admin"),
    PageEntry(
        "pages/operations.py", "Operations", ":material/monitor_heart:", "system:health", "Admin"
    ),
]


def pages_for(can) -> list[PageEntry]:
    return [p for p in PAGES if can(p.permission)]
