"""Folder mapping rules, table-driven with hostile names."""

from __future__ import annotations

import re

import pytest

from migrator.folders import map_folders, sanitize_part, special_use_by_name
from migrator.model import Capabilities, FolderInfo, FolderRules

SLASH = Capabilities(forbidden_name_chars="/")
DOT = Capabilities(forbidden_name_chars=".")


def F(*path: str, use: str | None = None, selectable: bool = True) -> FolderInfo:
    return FolderInfo(tuple(path), use, 1, selectable)


def mapping(sources, dests=(), rules=None, caps=SLASH):
    plan = map_folders(sources, dests, rules or FolderRules(), caps)
    return {m.source.path: m for m in plan.maps}, {e.source.path: e.reason for e in plan.excluded}


@pytest.mark.parametrize(
    ("name", "use"),
    [
        ("Sent", "\\Sent"),
        ("Sent Items", "\\Sent"),
        ("Gesendete Objekte", "\\Sent"),
        ("Éléments envoyés", "\\Sent"),
        ("Elementos enviados", "\\Sent"),
        ("Posta inviata", "\\Sent"),
        ("Verzonden items", "\\Sent"),
        ("Itens enviados", "\\Sent"),
        ("Wysłane", "\\Sent"),
        ("Отправленные", "\\Sent"),
        ("送信済みアイテム", "\\Sent"),
        ("deleted items", "\\Trash"),
        ("Papierkorb", "\\Trash"),
        ("Corbeille", "\\Trash"),
        ("Papelera", "\\Trash"),
        ("Cestino", "\\Trash"),
        ("Prullenbak", "\\Trash"),
        ("Lixeira", "\\Trash"),
        ("Kosz", "\\Trash"),
        ("Корзина", "\\Trash"),
        ("ゴミ箱", "\\Trash"),
        ("Junk E-mail", "\\Junk"),
        ("Spam", "\\Junk"),
        ("Courrier indésirable", "\\Junk"),
        ("迷惑メール", "\\Junk"),
        ("Entwürfe", "\\Drafts"),
        ("Brouillons", "\\Drafts"),
        ("Borradores", "\\Drafts"),
        ("Bozze", "\\Drafts"),
        ("Concepten", "\\Drafts"),
        ("Rascunhos", "\\Drafts"),
        ("Kopie robocze", "\\Drafts"),
        ("Черновики", "\\Drafts"),
        ("下書き", "\\Drafts"),
        ("Archiv", "\\Archive"),
        ("Архив", "\\Archive"),
        ("Projects", None),
        ("INBOX", None),
    ],
)
def test_localized_special_names(name, use):
    assert special_use_by_name((name,)) == use
    assert special_use_by_name(("INBOX", name)) == use if name != "INBOX" else True
    assert special_use_by_name(("Projects", name)) is None  # only top level / under INBOX


def test_special_use_attribute_maps_to_destination_folder_and_children_follow():
    src = [F("INBOX"), F("Gesendete Objekte"), F("Gesendete Objekte", "2019"), F("Mein Papierkorb", use="\\Trash")]
    dst = [F("INBOX"), F("Sent Messages", use="\\Sent"), F("Deleted", use="\\Trash")]
    maps, _ = mapping(src, dst)
    assert maps[("INBOX",)].dest_path == ("INBOX",)
    assert maps[("Gesendete Objekte",)].dest_path == ("Sent Messages",)
    assert maps[("Gesendete Objekte",)].special_use == "\\Sent"
    assert maps[("Gesendete Objekte", "2019")].dest_path == ("Sent Messages", "2019")
    assert maps[("Mein Papierkorb",)].dest_path == ("Deleted",)


def test_special_without_destination_folder_gets_english_name():
    maps, _ = mapping([F("Entwürfe")], [F("INBOX")])
    assert maps[("Entwürfe",)].dest_path == ("Drafts",)
    assert maps[("Entwürfe",)].special_use == "\\Drafts"


def test_automap_off_keeps_names():
    maps, _ = mapping(
        [F("Gesendete Objekte", use="\\Sent")], [F("Sent", use="\\Sent")], FolderRules(special_use_automap=False)
    )
    assert maps[("Gesendete Objekte",)].dest_path == ("Gesendete Objekte",)


def test_two_special_sources_merge_into_one():
    maps, _ = mapping([F("Sent"), F("Sent Items")], [F("Sent", use="\\Sent")])
    assert maps[("Sent",)].dest_path == maps[("Sent Items",)].dest_path == ("Sent",)
    assert any("merged" in n for n in maps[("Sent Items",)].notes)


@pytest.mark.parametrize(
    ("path", "caps", "expected"),
    [
        (("a.b",), SLASH, ("a.b",)),
        (("a.b",), DOT, ("a_b",)),
        (("a/b",), SLASH, ("a_b",)),
        (("日本語", "台北"), DOT, ("日本語", "台北")),
        (("Stuff & Things",), DOT, ("Stuff & Things",)),
        ((" padded ",), SLASH, ("padded",)),
        (("tab\there",), SLASH, ("tab_here",)),
    ],
)
def test_names_the_destination_cannot_hold_are_renamed_and_reported(path, caps, expected):
    maps, _ = mapping([F(*path)], caps=caps)
    m = maps[path]
    assert m.dest_path == expected
    if expected != path:
        assert m.notes, "a rename must be reported"


def test_sanitize_never_returns_empty():
    assert sanitize_part("...", DOT)[0] == "___"
    assert sanitize_part("   ", SLASH)[0] == "_"


def test_collision_after_rename_gets_suffix_not_merge():
    maps, _ = mapping([F("a.b"), F("a_b")], caps=DOT)
    dests = {m.dest_path for m in maps.values()}
    assert len(dests) == 2


def test_include_exclude_and_rename():
    rules = FolderRules(
        include=(re.compile("INBOX|Archive/.*|Old/.*"),),
        exclude=(re.compile("Archive/2019"),),
        renames=((re.compile("Old/(.*)"), r"Legacy/\1"),),
    )
    src = [F("INBOX"), F("Archive", "2019"), F("Archive", "2020"), F("Old", "Stuff"), F("Junk")]
    maps, excluded = mapping(src, rules=rules)
    assert set(maps) == {("INBOX",), ("Archive", "2020"), ("Old", "Stuff")}
    assert maps[("Old", "Stuff")].dest_path == ("Legacy", "Stuff")
    assert "exclude" in excluded[("Archive", "2019")]
    assert "include" in excluded[("Junk",)]


def test_noselect_containers_are_not_copied():
    maps, _ = mapping([F("Archive", selectable=False), F("Archive", "2020")])
    assert set(maps) == {("Archive", "2020")}
