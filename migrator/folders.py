"""Folder mapping: source folders -> destination paths.

Pure functions, no I/O. Rules, in order, for each source folder:

1. ``\\Noselect`` containers are not copied themselves (their children create them).
2. ``include`` / ``exclude`` regexes (full match on the path joined with "/").
3. Special-use automap: a folder that is Sent/Trash/Junk/Drafts/Archive, by its
   SPECIAL-USE attribute or by a common localized name, goes to the destination's
   folder with the same special use (or, when the destination has none, to the
   English name, created with that special-use hint). Children follow their parent.
4. Regex renames on the joined path.
5. A name part the destination cannot hold (a separator or forbidden character, an
   empty or over-long part) is changed, never dropped, and the change is reported.
6. Two source folders that land on the same destination path are merged only when
   both are the same special use; otherwise the later one gets a " (2)" suffix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from migrator.model import Capabilities, FolderInfo, FolderPath, FolderRules

# Common localized names of special folders (en, de, fr, es, it, nl, pt, pl, ru, ja and
# the names Outlook, Gmail and Thunderbird use). Compared case-insensitively.
LOCALIZED_NAMES: dict[str, tuple[str, ...]] = {
    "\\Sent": (
        "Sent",
        "Sent Items",
        "Sent Messages",
        "Sent Mail",
        "Sent-Mail",
        "Outbox Sent",
        "Gesendet",
        "Gesendete Objekte",
        "Gesendete Elemente",
        "Gesendete Nachrichten",
        "Envoyés",
        "Éléments envoyés",
        "Messages envoyés",
        "Envoyes",
        "Enviados",
        "Elementos enviados",
        "Mensajes enviados",
        "Posta inviata",
        "Inviati",
        "Elementi inviati",
        "Inviata",
        "Verzonden",
        "Verzonden items",
        "Verzonden berichten",
        "Enviadas",
        "Itens enviados",
        "Mensagens enviadas",
        "Itens Enviados",
        "Wysłane",
        "Elementy wysłane",
        "Wyslane",
        "Отправленные",
        "Отправленные элементы",
        "送信済み",
        "送信済みアイテム",
        "送信済みメール",
        "送信箱",
    ),
    "\\Trash": (
        "Trash",
        "Deleted",
        "Deleted Items",
        "Deleted Messages",
        "Bin",
        "Rubbish",
        "Papierkorb",
        "Gelöschte Objekte",
        "Gelöschte Elemente",
        "Gelöscht",
        "Corbeille",
        "Éléments supprimés",
        "Messages supprimés",
        "Papelera",
        "Elementos eliminados",
        "Eliminados",
        "Cestino",
        "Posta eliminata",
        "Elementi eliminati",
        "Prullenbak",
        "Verwijderde items",
        "Verwijderd",
        "Lixeira",
        "Lixo",
        "Itens excluídos",
        "Itens eliminados",
        "Kosz",
        "Elementy usunięte",
        "Корзина",
        "Удаленные",
        "Удалённые",
        "Удаленные элементы",
        "ゴミ箱",
        "削除済みアイテム",
        "削除済み",
    ),
    "\\Junk": (
        "Junk",
        "Spam",
        "Junk E-mail",
        "Junk Email",
        "Junk Mail",
        "Bulk Mail",
        "Junk-E-Mail",
        "Unerwünscht",
        "Courrier indésirable",
        "Pourriel",
        "Indésirables",
        "Correo no deseado",
        "Correo basura",
        "Posta indesiderata",
        "Indesiderata",
        "Ongewenste e-mail",
        "Ongewenst",
        "Lixo eletrônico",
        "Lixo electrónico",
        "Lixo Eletrônico",
        "Wiadomości-śmieci",
        "Śmieci",
        "Спам",
        "Нежелательная почта",
        "迷惑メール",
    ),
    "\\Drafts": (
        "Drafts",
        "Draft",
        "Entwürfe",
        "Brouillons",
        "Borradores",
        "Bozze",
        "Concepten",
        "Concept",
        "Rascunhos",
        "Kopie robocze",
        "Szkice",
        "Черновики",
        "下書き",
    ),
    "\\Archive": (
        "Archive",
        "Archives",
        "Archiv",
        "Archivo",
        "Archivio",
        "Archief",
        "Arquivo",
        "Archiwum",
        "Архив",
        "アーカイブ",
    ),
}
CANONICAL_NAMES = {use: names[0] for use, names in LOCALIZED_NAMES.items()}
_BY_NAME = {name.casefold(): use for use, names in LOCALIZED_NAMES.items() for name in names}

REPLACEMENT = "_"


@dataclass(frozen=True, slots=True)
class FolderMap:
    source: FolderInfo
    dest_path: FolderPath
    special_use: str | None = None
    notes: tuple[str, ...] = ()  # renames and merges, for the report

    @property
    def renamed(self) -> bool:
        return self.dest_path != self.source.path


@dataclass(frozen=True, slots=True)
class Excluded:
    source: FolderInfo
    reason: str


@dataclass(slots=True)
class FolderPlan:
    maps: list[FolderMap] = field(default_factory=list)
    excluded: list[Excluded] = field(default_factory=list)


def join(path: FolderPath) -> str:
    return "/".join(path)


def special_use_by_name(path: FolderPath) -> str | None:
    """The special use a folder's name suggests: top level, or directly under INBOX."""
    if len(path) == 1 and path[0].upper() != "INBOX":
        return _BY_NAME.get(path[0].casefold())
    if len(path) == 2 and path[0].upper() == "INBOX":
        return _BY_NAME.get(path[1].casefold())
    return None


def sanitize_part(part: str, caps: Capabilities) -> tuple[str, str | None]:
    """Return the part as the destination can hold it, and why it changed (or None)."""
    new = part
    bad = sorted({c for c in part if c in caps.forbidden_name_chars or ord(c) < 0x20 or c == "\x7f"})
    if bad:
        new = "".join(REPLACEMENT if c in bad else c for c in new)
    if new.strip() != new:
        new = new.strip()
    if not new:
        new = REPLACEMENT
    if caps.max_name_length and len(new) > caps.max_name_length:
        new = new[: caps.max_name_length]
    if new == part:
        return part, None
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return new, f"the destination cannot hold {shown} in a folder name"
    return new, "the destination cannot hold this name as it is"


def _selected(path: FolderPath, rules: FolderRules) -> str | None:
    """None if the folder is selected, else the reason it is excluded."""
    joined = join(path)
    if rules.include and not any(p.fullmatch(joined) for p in rules.include):
        return "not matched by folders.include"
    for p in rules.exclude:
        if p.fullmatch(joined):
            return f"excluded by folders.exclude {p.pattern!r}"
    return None


def map_folders(
    sources: Iterable[FolderInfo],
    dest_folders: Iterable[FolderInfo],
    rules: FolderRules,
    dest_caps: Capabilities,
) -> FolderPlan:
    """Map every source folder to a destination path (see the module docstring)."""
    sources = sorted(sources, key=lambda f: (not f.is_inbox, f.path))
    dest_special = {}
    for d in dest_folders:
        if d.special_use and d.special_use not in dest_special:
            dest_special[d.special_use] = d.path
    plan = FolderPlan()
    # top-level source path -> (dest prefix, special use) for special folders
    special_prefix: dict[FolderPath, tuple[FolderPath, str]] = {}
    if rules.special_use_automap:
        for f in sources:
            use = f.special_use or special_use_by_name(f.path)
            if use and use in CANONICAL_NAMES and (len(f.path) == 1 or f.path[0].upper() == "INBOX"):
                target = dest_special.get(use, (CANONICAL_NAMES[use],))
                special_prefix.setdefault(f.path, (target, use))

    taken: dict[FolderPath, str | None] = {}
    for f in sources:
        if not f.selectable:
            continue
        reason = _selected(f.path, rules)
        if reason:
            plan.excluded.append(Excluded(f, reason))
            continue
        notes: list[str] = []
        use: str | None = None
        if f.is_inbox:
            path: FolderPath = ("INBOX",)
        else:
            path = f.path
            for n in range(len(f.path), 0, -1):
                hit = special_prefix.get(f.path[:n])
                if hit:
                    path = hit[0] + f.path[n:]
                    if n == len(f.path):
                        use = hit[1]
                    break
            for pattern, repl in rules.renames:
                joined = join(path)
                if pattern.fullmatch(joined):
                    renamed = pattern.sub(repl, joined, count=1)
                    parts = tuple(p for p in renamed.split("/") if p)
                    if parts:
                        notes.append(f"renamed by folders.rename {pattern.pattern!r}")
                        path = parts
                    break
            clean = []
            for part in path:
                new, why = sanitize_part(part, dest_caps)
                if why:
                    notes.append(f"{part!r} -> {new!r}: {why}")
                clean.append(new)
            path = tuple(clean)
            if path and path[0].upper() == "INBOX" and len(path) == 1:
                path = ("INBOX",)
            reserved = {n.casefold() for n in dest_caps.reserved_names}
            if path and use is None and path[0].casefold() in reserved:
                new_top = f"{path[0]} (mail)"
                notes.append(f"{path[0]!r} -> {new_top!r}: the destination keeps {path[0]!r} for itself")
                path = (new_top, *path[1:])
        if path in taken:
            if (use is not None and taken[path] == use) or path == ("INBOX",):
                notes.append(f"merged into {join(path)!r} with another source folder")
            else:
                base = path
                i = 2
                while path in taken:
                    path = (*base[:-1], f"{base[-1]} ({i})")
                    i += 1
                notes.append(f"renamed to {join(path)!r}: another source folder already maps to {join(base)!r}")
        taken[path] = use
        if path != f.path and not notes and not use:
            notes.append(f"mapped to {join(path)!r}")
        plan.maps.append(FolderMap(f, path, use or f.special_use, tuple(notes)))
    return plan


def compile_patterns(patterns: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p) for p in patterns)
