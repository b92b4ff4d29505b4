"""Shared texts for the quality tests, and the check that clean German passes every step."""

from __future__ import annotations

import pytest

from core.datasets.quality import QualityInput, QualityPipeline, QualityThresholds

# Clean German prose of the kind the workbench trains on: administrative guidance, a letter,
# an explanatory answer, a short chat answer. Each must pass every check.
CLEAN_DE: dict[str, str] = {
    "wohngeld": (
        "Wohngeld ist ein Zuschuss zu den Wohnkosten für Haushalte mit geringem Einkommen. "
        "Ob Sie einen Anspruch haben, hängt von der Zahl der Haushaltsmitglieder, der Höhe "
        "des Gesamteinkommens und der Miete ab. Den Antrag stellen Sie bei der Wohngeldstelle "
        "Ihrer Stadt oder Gemeinde.\n\n"
        "Legen Sie dem Antrag bitte Nachweise über Ihr Einkommen, den Mietvertrag und eine "
        "aktuelle Mietbescheinigung bei. Fehlen Unterlagen, verzögert sich die Bearbeitung. "
        "Das Wohngeld wird in der Regel für zwölf Monate bewilligt und danach auf Antrag "
        "erneut geprüft."
    ),
    "brief": (
        "Sehr geehrte Frau Schneider,\n\n"
        "vielen Dank für Ihre Anfrage vom 3. März zur Verlängerung Ihrer Aufenthaltserlaubnis. "
        "Wir haben Ihre Unterlagen geprüft und können Ihnen mitteilen, dass noch ein aktueller "
        "Nachweis über Ihre Krankenversicherung fehlt. Bitte reichen Sie diesen bis zum Ende "
        "des Monats ein, damit wir den Vorgang abschließen können.\n\n"
        "Für Rückfragen stehen wir Ihnen während der Sprechzeiten gern zur Verfügung.\n\n"
        "Mit freundlichen Grüßen\n"
        "Ihre Ausländerbehörde"
    ),
    "erklaerung": (
        "Eine Widerspruchsfrist beginnt mit der Bekanntgabe des Bescheids. Wird der Bescheid "
        "mit einfacher Post versandt, gilt er am vierten Tag nach der Aufgabe zur Post als "
        "bekannt gegeben. Die Frist beträgt dann einen Monat. Fällt das Ende der Frist auf "
        "einen Samstag, Sonntag oder gesetzlichen Feiertag, endet sie erst mit dem Ablauf des "
        "nächsten Werktags. Der Widerspruch muss schriftlich oder zur Niederschrift bei der "
        "Behörde eingelegt werden, die den Bescheid erlassen hat. Eine Begründung ist nicht "
        "vorgeschrieben, hilft aber bei der Prüfung."
    ),
    "liste": (
        "Für die Anmeldung eines Gewerbes benötigen Sie folgende Unterlagen:\n"
        "- einen gültigen Personalausweis oder Reisepass\n"
        "- bei erlaubnispflichtigen Tätigkeiten die entsprechende Erlaubnis\n"
        "- bei Handwerksbetrieben die Eintragung in die Handwerksrolle\n\n"
        "Die Anmeldung kostet 26 Euro und kann auch online erledigt werden. Nach der Anmeldung "
        "informiert das Gewerbeamt automatisch das Finanzamt, die Berufsgenossenschaft und die "
        "zuständige Kammer. Sie erhalten anschließend eine Bestätigung, die Sie gut aufbewahren "
        "sollten."
    ),
    "kurz": "Ja, das ist möglich. Sie können den Termin online verschieben.",
}

ENGLISH = (
    "The city council has decided that applications for housing benefit can be submitted "
    "online from next month. Please make sure that all required documents are attached, "
    "because incomplete applications will delay the decision considerably."
)
FRENCH = (
    "Le conseil municipal a décidé que les demandes d'allocation logement pourront être "
    "déposées en ligne dès le mois prochain. Veuillez joindre tous les justificatifs, car "
    "les dossiers incomplets retardent considérablement la décision."
)


@pytest.mark.parametrize("key", sorted(CLEAN_DE))
def test_clean_german_passes_every_check(key: str) -> None:
    pipeline = QualityPipeline(thresholds=QualityThresholds(blocklist=["Scheiß"]))
    (result,) = pipeline.run([QualityInput(key, CLEAN_DE[key])])
    assert result.reasons == [], result.signals
    assert result.flagged_spans == []
    assert result.score == 1.0
    assert result.keep
    assert result.signals["language"] == "de"
