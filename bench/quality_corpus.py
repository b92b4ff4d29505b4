"""Deterministic synthetic German administrative documents for the quality benchmark.

Sentences are composed from German public-administration vocabulary (authorities, procedures,
compound nouns, deadlines, amounts), grouped in paragraphs, with headings and bullet lists
here and there. A share of documents is deliberately bad: near-duplicates (an earlier
document with a few words changed and a sentence dropped), exact duplicates (whitespace and
case changed), repetitive documents, mojibake, control characters, English or French text,
and documents with personal data (phone numbers, e-mail addresses, valid IBANs).

Every document carries its kind in the JSONL record ("kind"), so the benchmark can check what
was flagged; near/exact duplicates also carry "source" (the id they were copied from).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

AUTHORITIES = [
    "Die Behörde",
    "Das Bürgeramt",
    "Die Stadtverwaltung",
    "Das Finanzamt",
    "Die zuständige Stelle",
    "Der Landkreis",
    "Das Jobcenter",
    "Die Ausländerbehörde",
    "Das Ordnungsamt",
    "Die Gemeinde",
    "Das Standesamt",
    "Die Familienkasse",
    "Das Landesamt",
    "Die Zulassungsstelle",
    "Das Sozialamt",
    "Die Bauaufsicht",
    "Das Gesundheitsamt",
    "Die Kreisverwaltung",
    "Das Jugendamt",
    "Die Meldebehörde",
    "Das Umweltamt",
    "Die Wohngeldstelle",
    "Das Rechnungsprüfungsamt",
    "Die Bezirksregierung",
]
PREFIXES = [
    "Wohn",
    "Bau",
    "Steuer",
    "Gewerbe",
    "Melde",
    "Kinder",
    "Eltern",
    "Pflege",
    "Renten",
    "Abfall",
    "Wasser",
    "Energie",
    "Verkehrs",
    "Schul",
    "Sozial",
    "Umwelt",
    "Fahrzeug",
    "Grund",
    "Hunde",
    "Jagd",
    "Fischerei",
    "Gaststätten",
    "Sonder",
    "Personal",
    "Aufenthalts",
    "Einbürgerungs",
    "Erschließungs",
    "Denkmal",
    "Lärmschutz",
    "Kita",
]
SUFFIXES_M = ["antrag", "bescheid", "nachweis", "zuschuss", "beitrag", "widerspruch", "vertrag"]
SUFFIXES_F = [
    "gebühr",
    "genehmigung",
    "bescheinigung",
    "förderung",
    "pflicht",
    "verordnung",
    "erklärung",
    "anmeldung",
    "satzung",
    "erlaubnis",
    "prüfung",
]
SUFFIXES_N = ["verfahren", "register", "recht", "gutachten", "formular", "zeugnis", "konto"]
ADJECTIVES = [
    "vollständige",
    "schriftliche",
    "elektronische",
    "beglaubigte",
    "aktuelle",
    "gültige",
    "unterschriebene",
    "ordnungsgemäße",
    "fristgerechte",
    "zuständige",
    "erforderliche",
    "vorläufige",
    "amtliche",
    "digitale",
    "ergänzende",
    "formlose",
]
VERBS = [
    ("prüft", "geprüft", "prüfen"),
    ("bearbeitet", "bearbeitet", "bearbeiten"),
    ("genehmigt", "genehmigt", "genehmigen"),
    ("bestätigt", "bestätigt", "bestätigen"),
    ("versendet", "versendet", "versenden"),
    ("erteilt", "erteilt", "erteilen"),
    ("bewilligt", "bewilligt", "bewilligen"),
    ("erfasst", "erfasst", "erfassen"),
    ("verlängert", "verlängert", "verlängern"),
    ("berechnet", "berechnet", "berechnen"),
    ("überprüft", "überprüft", "überprüfen"),
    ("veröffentlicht", "veröffentlicht", "veröffentlichen"),
]
TIMES = [
    "innerhalb von vier Wochen",
    "bis zum Ende des Quartals",
    "nach Eingang aller Unterlagen",
    "in der Regel binnen zehn Werktagen",
    "unverzüglich",
    "im Rahmen der gesetzlichen Fristen",
    "spätestens drei Monate vor Ablauf",
    "zum nächstmöglichen Termin",
    "nach vorheriger Terminvereinbarung",
    "bis zum {day}. {month} {year}",
    "ab dem {day}. {month} {year}",
    "einmal im Kalenderjahr",
    "vor Beginn der Maßnahme",
    "nach Abschluss der Prüfung",
]
PLACES = [
    "im Bürgerbüro",
    "auf der Internetseite der Verwaltung",
    "im Servicezentrum",
    "an der Information im Erdgeschoss",
    "über das Onlineportal",
    "in Zimmer {room}",
    "bei der Telefonzentrale",
    "im Rathaus",
    "in den Sprechzeiten",
    "per Post",
]
LAWS = [
    "§ {n} Abs. {k} VwVfG",
    "§ {n} SGB II",
    "§ {n} BauGB",
    "§ {n} AO",
    "§ {n} WoGG",
    "Artikel {n} der Landesverfassung",
    "§ {n} BMG",
    "der Gebührensatzung",
    "§ {n} AufenthG",
]
CONNECTORS = [
    "Darüber hinaus",
    "Außerdem",
    "Gleichzeitig",
    "In diesem Zusammenhang",
    "Im Übrigen",
    "Grundsätzlich",
    "Ergänzend",
    "Daneben",
    "Allerdings",
    "Insbesondere",
]
PEOPLE = [
    "Antragstellerinnen und Antragsteller",
    "Bürgerinnen und Bürger",
    "Eigentümerinnen und Eigentümer",
    "Gewerbetreibende",
    "Eltern",
    "Mieterinnen und Mieter",
    "Leistungsberechtigte",
    "Arbeitgeber",
    "Vereine",
    "Studierende",
]
MONTHS = [
    "Januar",
    "Februar",
    "März",
    "April",
    "Mai",
    "Juni",
    "Juli",
    "August",
    "September",
    "Oktober",
    "November",
    "Dezember",
]
SURNAMES = ["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker"]

ENGLISH = [
    "The application must be submitted before the end of the month.",
    "Please make sure that all required documents are attached to your request.",
    "Our office is open from Monday to Friday between eight and four.",
    "The fee for this service depends on the type of permit you apply for.",
    "If you have any questions, please contact the citizens' office by phone.",
    "Processing usually takes about four weeks after we receive the complete file.",
    "You will receive a written decision by post once the review is finished.",
    "Applicants who miss the deadline have to submit a new application next year.",
]
FRENCH = [
    "La demande doit être déposée avant la fin du mois auprès du service compétent.",
    "Veuillez joindre toutes les pièces justificatives nécessaires à votre dossier.",
    "Le bureau est ouvert du lundi au vendredi de huit heures à seize heures.",
    "Les frais dépendent du type d'autorisation demandée par le requérant.",
    "Vous recevrez une décision écrite par courrier après l'examen de votre dossier.",
]


def _noun(rng: random.Random) -> tuple[str, str]:
    """(article-in-accusative + noun, nominative article + noun)."""
    p = rng.choice(PREFIXES)
    g = rng.random()
    if g < 0.4:
        s = rng.choice(SUFFIXES_F)
        return f"die {p}{s}", f"Die {p}{s}"
    if g < 0.7:
        s = rng.choice(SUFFIXES_M)
        return f"den {p}{s}", f"Der {p}{s}"
    s = rng.choice(SUFFIXES_N)
    return f"das {p}{s}", f"Das {p}{s}"


def _fill(rng: random.Random, s: str) -> str:
    return s.format(
        day=rng.randint(1, 28),
        month=rng.choice(MONTHS),
        year=rng.randint(2019, 2027),
        room=rng.randint(1, 450),
        n=rng.randint(1, 180),
        k=rng.randint(1, 6),
    )


def _adj(rng: random.Random, noun_acc: str) -> str:
    if rng.random() < 0.5:
        art, noun = noun_acc.split(" ", 1)
        ending = {"den": "n", "die": "", "das": ""}[art]
        adj = rng.choice(ADJECTIVES)
        adj = adj + ending if art == "den" else (adj[:-1] + "e" if art == "das" else adj)
        return f"{art} {adj} {noun}"
    return noun_acc


HEDGES = [
    "in der Regel",
    "zudem",
    "ausschließlich",
    "gegebenenfalls",
    "grundsätzlich",
    "auch",
    "bereits",
    "regelmäßig",
    "künftig",
    "nur auf Antrag",
    "zeitnah",
    "vorrangig",
    "weiterhin",
    "nach Möglichkeit",
    "erstmals",
    "wie bisher",
    "ab sofort",
    "im Einzelfall",
    "derzeit",
]
CLAUSE_OPENERS = [
    "Bitte beachten Sie, dass",
    "Wir weisen darauf hin, dass",
    "Es ist zu beachten, dass",
    "Zu berücksichtigen ist, dass",
    "Wichtig ist, dass",
    "Beachten Sie bitte, dass",
    "Es gilt, dass",
    "Hierbei ist wichtig, dass",
    "Bedenken Sie, dass",
]


def _lc(s: str) -> str:
    return s[0].lower() + s[1:]


def _opt(rng: random.Random, pool: list[str], p: float = 0.5) -> str:
    return rng.choice(pool) + " " if rng.random() < p else ""


def sentence(rng: random.Random) -> str:
    """One German administrative sentence.

    Built from slots with large pools and short fixed parts (at most a few tokens), so that a
    10 KB document of these sentences repeats about as few 5-grams as real prose does.
    """
    verb, part, inf = rng.choice(VERBS)
    acc, nom = _noun(rng)
    acc2, nom2 = _noun(rng)
    when = _fill(rng, rng.choice(TIMES))
    where = _fill(rng, rng.choice(PLACES))
    law = _fill(rng, rng.choice(LAWS))
    who = rng.choice(AUTHORITIES)
    people = rng.choice(PEOPLE)
    hedge = _opt(rng, HEDGES)
    t = rng.randrange(14)
    if t == 0:
        s = f"{who} {verb} {hedge}{_adj(rng, acc)} {when}."
    elif t == 1:
        s = f"{rng.choice(CLAUSE_OPENERS)} {_lc(nom)} {hedge}{when} {part} werden muss."
    elif t == 2:
        s = f"Für {acc} benötigen {people} {hedge}{_adj(rng, acc2)}."
    elif t == 3:
        s = f"Nach {law} {verb} {_lc(who)} {hedge}{acc} {when}."
    elif t == 4:
        s = f"Auskünfte zu {acc.split(' ', 1)[1]} erhalten {people} {hedge}{where}."
    elif t == 5:
        euros = rng.randint(5, 900)
        cents = rng.choice(["00", "50", "25", "90"])
        s = f"Für {_adj(rng, acc)} fallen {hedge}{euros},{cents} Euro an."
    elif t == 6:
        s = f"{rng.choice(CONNECTORS)} {verb} {_lc(who)} {acc} {hedge}{where}."
    elif t == 7:
        s = f"{nom} wird {hedge}{where} {part}, sofern {nom2.lower()} {when} vorliegt."
    elif t == 8:
        n = rng.randint(2, 40)
        since = rng.choice(["Im Jahr", "Seit", "Bis"])
        kind = rng.choice(PREFIXES)
        s = f"{since} {rng.randint(2015, 2025)} wurden {n * 37} {kind}anträge {part}."
    elif t == 9:
        s = f"{people} können {acc} {hedge}{where} beantragen."
    elif t == 10:
        s = f"{who} {verb} {nom2.split(' ', 1)[1]} und {acc.split(' ', 1)[1]} {hedge}gemeinsam."
    elif t == 11:
        action = rng.choice(["nimmt", "bearbeitet", "prüft"])
        s = f"Frau {rng.choice(SURNAMES)} {action} {acc} {where}"
        s += " entgegen." if action == "nimmt" else "."
    elif t == 12:
        prep = rng.choice(["Ohne", "Mit"])
        how = rng.choice(["nicht", "sofort", "später", "vollständig"])
        s = f"{prep} {_adj(rng, acc)} {verb} {_lc(who)} {hedge}{acc2} {how}."
    else:
        span = f"{rng.randint(1, 24)} {rng.choice(['Monate', 'Wochen', 'Jahre'])}"
        s = f"{nom} gilt {hedge}{rng.choice(['für', 'bis', 'ab'])} {span}, {when}."
    return s[0].upper() + s[1:]


def _heading(rng: random.Random) -> str:
    _, nom = _noun(rng)
    topic = rng.choice(["Hinweise", "Voraussetzungen", "Ablauf", "Fristen", "Kosten"])
    return f"{nom.split(' ', 1)[1]}: {topic}"


def german_document(rng: random.Random, target_chars: int) -> str:
    """Paragraphs of 2-6 sentences up to about target_chars, sometimes a heading or a list."""
    paras: list[str] = []
    size = 0
    while size < target_chars:
        r = rng.random()
        if r < 0.08 and target_chars > 2000:
            p = _heading(rng)
        elif r < 0.14:
            items = [f"- {_noun(rng)[1].split(' ', 1)[1]}" for _ in range(rng.randint(2, 4))]
            p = "Folgende Unterlagen sind erforderlich:\n" + "\n".join(items)
        else:
            p = " ".join(sentence(rng) for _ in range(rng.randint(2, 6)))
        paras.append(p)
        size += len(p) + 2
    return "\n\n".join(paras)


def _valid_iban(rng: random.Random) -> str:
    bank = f"{rng.randint(10000000, 99999999)}"
    acct = f"{rng.randint(0, 9999999999):010d}"
    bban = bank + acct
    num = int(bban + "131400")  # "DE" -> 13 14, check digits 00
    check = 98 - num % 97
    iban = f"DE{check:02d}{bban}"
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


def _pii_sentence(rng: random.Random) -> str:
    k = rng.randrange(3)
    if k == 0:
        phone = rng.choice(["+49 30 {a}", "030-{a}", "0171 {a}", "(089) {a}", "+49 (0)40 {a}"])
        number = phone.format(a=rng.randint(1000000, 9999999))
        return f"Sie erreichen uns telefonisch unter {number}."
    if k == 1:
        name = rng.choice(SURNAMES).lower()
        address = f"{name}.{rng.randint(1, 99)}@stadt-beispiel.de"
        return f"Fragen richten Sie bitte per E-Mail an {address}."
    return f"Bitte überweisen Sie den Betrag auf das Konto mit der IBAN {_valid_iban(rng)}."


def _mutate(rng: random.Random, text: str, word_rate: float) -> str:
    """Near duplicate: replace a few words and drop one sentence of a long text."""
    words = text.split(" ")
    for _ in range(max(1, int(len(words) * word_rate))):
        i = rng.randrange(len(words))
        if "\n" not in words[i]:
            words[i] = rng.choice(["neue", "geänderte", "weitere", "bisherige", "jeweilige"])
    out = " ".join(words)
    sentences = out.split(". ")
    if len(sentences) > 20:
        del sentences[rng.randrange(1, len(sentences) - 1)]
    return ". ".join(sentences)


def _mojibake(rng: random.Random, text: str) -> str:
    codec = rng.choice(["latin-1", "cp1252"])
    # Only part of the text is broken, as when one pasted section had the wrong encoding.
    cut = len(text) // 3
    broken = text[cut : 2 * cut].encode("utf-8").decode(codec, errors="replace")
    return text[:cut] + broken + text[2 * cut :]


def _repetitive(rng: random.Random, text: str) -> str:
    paras = text.split("\n\n")
    if rng.random() < 0.5:
        p = rng.choice(paras)
        return "\n\n".join(paras[: len(paras) // 3] + [p] * max(3, len(paras) // 2))
    line = sentence(rng)
    return "\n".join([line] * 8 + paras[: len(paras) // 2])


KIND_SHARES = [
    ("near_duplicate", 0.10),
    ("exact_duplicate", 0.03),
    ("repetitive", 0.04),
    ("mojibake", 0.02),
    ("control_chars", 0.01),
    ("english", 0.015),
    ("french", 0.005),
    ("pii", 0.05),
]


def generate(n: int, target_chars: int, seed: int = 1234) -> Iterator[dict]:
    """n records {"id", "text", "kind"[, "source"]}, deterministic for (n, target_chars, seed)."""
    rng = random.Random(seed)
    clean: list[tuple[str, str]] = []  # (id, text) of clean originals, for copies
    for i in range(n):
        doc_id = f"d{i:06d}"
        r = rng.random()
        kind = "clean"
        acc = 0.0
        for k, share in KIND_SHARES:
            acc += share
            if r < acc:
                kind = k
                break
        if kind in ("near_duplicate", "exact_duplicate") and not clean:
            kind = "clean"
        rec: dict = {"id": doc_id, "kind": kind}
        if kind == "near_duplicate":
            src_id, src = rng.choice(clean[-2000:])
            rate = 0.01 if target_chars > 3000 else 0.006
            rec["text"], rec["source"] = _mutate(rng, src, rate), src_id
        elif kind == "exact_duplicate":
            src_id, src = rng.choice(clean[-2000:])
            noisy = src.replace(". ", ".  ").replace(", ", " , ")
            rec["text"], rec["source"] = noisy, src_id
        elif kind in ("english", "french"):
            pool = ENGLISH if kind == "english" else FRENCH
            parts, size = [], 0
            while size < target_chars:
                p = " ".join(rng.choice(pool) for _ in range(rng.randint(2, 5)))
                parts.append(p)
                size += len(p) + 2
            rec["text"] = "\n\n".join(parts)
        else:
            text = german_document(rng, target_chars)
            if kind == "clean":
                clean.append((doc_id, text))
            elif kind == "repetitive":
                text = _repetitive(rng, text)
            elif kind == "mojibake":
                text = _mojibake(rng, text)
            elif kind == "control_chars":
                pos = rng.randrange(len(text))
                text = text[:pos] + "\x00\x07\x1b" + text[pos:]
            elif kind == "pii":
                paras = text.split("\n\n")
                paras[rng.randrange(len(paras))] += " " + _pii_sentence(rng)
                text = "\n\n".join(paras)
            rec["text"] = text
        yield rec


def write_jsonl(path: Path, records: Iterator[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]
