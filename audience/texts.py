"""What the public pages and the confirmation mail say, in each form language.

The form's language decides, not the visitor's browser: the consent text an
operator writes is in one language, and everything around it must match.
"""

TEXTS = {
    "en": {
        "email": "Email address",
        "subscribe": "Subscribe",
        "lists": "Lists",
        "thanks_title": "Thank you",
        "thanks": "Thank you. If this address needs to confirm, we have sent it an email with a link.",
        "too_fast": "That was quicker than a person can fill in a form. Please check the form and send it again.",
        "expired_form": "This form has expired. Please send it again.",
        "check_and_send": "Please check your details and press the button once more.",
        "invalid": "Please check the highlighted fields.",
        "required": "This field is required.",
        "bad_email": "This is not a valid email address.",
        "bad_number": "Enter a number.",
        "bad_date": "Enter a date (YYYY-MM-DD).",
        "choose_list": "Choose at least one list.",
        "rate_limited": "Too many signups from here. Please try again later.",
        "confirm_title": "Confirm your subscription",
        "confirm_question": "Please confirm that {email} wants to receive: {lists}.",
        "confirm_button": "Confirm subscription",
        "confirmed_title": "Subscription confirmed",
        "confirmed": "Thank you, your subscription is confirmed.",
        "link_expired_title": "Link expired",
        "link_expired": "This confirmation link has expired. Please sign up again to get a new one.",
        "manage": "Manage your subscriptions",
        "prefs_title": "Your subscriptions",
        "prefs_unsubscribed": "You are unsubscribed from everything. Choose a list below to join it again.",
        "prefs_pending": "waiting for your confirmation",
        "first_name": "First name",
        "last_name": "Last name",
        "pause": "Pause all mail",
        "no_pause": "Don't pause",
        "pause_for": "for {days} days",
        "paused_until": "Mail is paused until {date}.",
        "resume": "Resume now",
        "save": "Save",
        "unsubscribe_all": "Unsubscribe from everything",
        "export": "Email me my data",
        "saved": "Your preferences are saved.",
        "unsubscribed_all": "You are unsubscribed from everything.",
        "export_sent": "We have sent a link to your data to your address.",
        "confirm_subject": "Please confirm your subscription",
        "confirm_body": (
            "Hello {{ contact.first_name }},\n\n"
            "please confirm that you want to receive {{ lists }} by opening this link:\n\n"
            "{{ confirm_url }}\n\n"
            "If you did not sign up, ignore this email: you will get nothing more from us.\n"
        ),
    },
    "de": {
        "email": "E-Mail-Adresse",
        "subscribe": "Anmelden",
        "lists": "Listen",
        "thanks_title": "Vielen Dank",
        "thanks": "Vielen Dank. Falls diese Adresse bestätigt werden muss, haben wir ihr eine E-Mail mit einem Link "
                  "geschickt.",
        "too_fast": "Das ging schneller, als ein Mensch ein Formular ausfüllen kann. Bitte prüfen Sie das Formular "
                    "und senden Sie es erneut.",
        "expired_form": "Dieses Formular ist abgelaufen. Bitte senden Sie es erneut.",
        "check_and_send": "Bitte prüfen Sie Ihre Angaben und drücken Sie die Schaltfläche noch einmal.",
        "invalid": "Bitte prüfen Sie die markierten Felder.",
        "required": "Dieses Feld ist erforderlich.",
        "bad_email": "Das ist keine gültige E-Mail-Adresse.",
        "bad_number": "Bitte eine Zahl eingeben.",
        "bad_date": "Bitte ein Datum eingeben (JJJJ-MM-TT).",
        "choose_list": "Bitte mindestens eine Liste wählen.",
        "rate_limited": "Zu viele Anmeldungen von hier. Bitte versuchen Sie es später erneut.",
        "confirm_title": "Anmeldung bestätigen",
        "confirm_question": "Bitte bestätigen Sie, dass {email} Folgendes erhalten möchte: {lists}.",
        "confirm_button": "Anmeldung bestätigen",
        "confirmed_title": "Anmeldung bestätigt",
        "confirmed": "Vielen Dank, Ihre Anmeldung ist bestätigt.",
        "link_expired_title": "Link abgelaufen",
        "link_expired": "Dieser Bestätigungslink ist abgelaufen. Bitte melden Sie sich erneut an, um einen neuen zu "
                        "erhalten.",
        "manage": "Abonnements verwalten",
        "prefs_title": "Ihre Abonnements",
        "prefs_unsubscribed": "Sie sind von allem abgemeldet. Wählen Sie unten eine Liste, um sie wieder zu erhalten.",
        "prefs_pending": "wartet auf Ihre Bestätigung",
        "first_name": "Vorname",
        "last_name": "Nachname",
        "pause": "Alle E-Mails pausieren",
        "no_pause": "Nicht pausieren",
        "pause_for": "für {days} Tage",
        "paused_until": "E-Mails sind bis {date} pausiert.",
        "resume": "Jetzt fortsetzen",
        "save": "Speichern",
        "unsubscribe_all": "Von allem abmelden",
        "export": "Meine Daten per E-Mail senden",
        "saved": "Ihre Einstellungen sind gespeichert.",
        "unsubscribed_all": "Sie sind von allem abgemeldet.",
        "export_sent": "Wir haben einen Link zu Ihren Daten an Ihre Adresse geschickt.",
        "confirm_subject": "Bitte bestätigen Sie Ihre Anmeldung",
        "confirm_body": (
            "Hallo {{ contact.first_name }},\n\n"
            "bitte bestätigen Sie, dass Sie {{ lists }} erhalten möchten, indem Sie diesen Link öffnen:\n\n"
            "{{ confirm_url }}\n\n"
            "Wenn Sie sich nicht angemeldet haben, ignorieren Sie diese E-Mail: Sie erhalten nichts weiter von uns.\n"
        ),
    },
}


def texts(language: str) -> dict:
    return TEXTS.get(language) or TEXTS["en"]
