"""Bounce and complaint messages as real MTAs write them (RFC 3464, RFC 5965 and their published examples).

Each builder takes the VERP address the report goes to, the failed recipient
and the original Message-ID, and returns the bytes an MTA would deliver.
"""


def _crlf(text):
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def _original(verp, rcpt, message_id):
    return f"""Return-Path: <{verp}>
From: Shop News <news@shop.example>
To: {rcpt}
Subject: Spring news
Message-ID: <{message_id}>
Date: Mon, 2 Mar 2026 09:00:00 +0000
List-Unsubscribe-Post: List-Unsubscribe=One-Click
"""


def postfix(verp, rcpt, message_id, status="5.1.1", text="User unknown in virtual mailbox table"):
    return _crlf(f"""Return-Path: <>
Received: by mail.shop.example (Postfix) id 4Zq1x2y3z4
Date: Mon,  2 Mar 2026 09:00:05 +0000 (UTC)
From: MAILER-DAEMON@mail.shop.example (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {verp}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="4Zq1x2y3z4.1772442005/mail.shop.example"
Message-Id: <20260302090005.4Zq1x2y3z4@mail.shop.example>

This is a MIME-encapsulated message.

--4Zq1x2y3z4.1772442005/mail.shop.example
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mail.shop.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

<{rcpt}>: host mx.example.net[192.0.2.25] said: 550 {status} <{rcpt}>:
    Recipient address rejected: {text} (in reply to RCPT TO command)

--4Zq1x2y3z4.1772442005/mail.shop.example
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mail.shop.example
X-Postfix-Queue-ID: 4Zq1x2y3z4
X-Postfix-Sender: rfc822; {verp}
Arrival-Date: Mon,  2 Mar 2026 09:00:00 +0000 (UTC)

Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822;{rcpt}
Action: failed
Status: {status}
Remote-MTA: dns; mx.example.net
Diagnostic-Code: smtp; 550 {status} <{rcpt}>: Recipient address rejected: {text}

--4Zq1x2y3z4.1772442005/mail.shop.example
Content-Description: Undelivered Message
Content-Type: message/rfc822

{_original(verp, rcpt, message_id)}
Hello Bob

--4Zq1x2y3z4.1772442005/mail.shop.example--
""")


def exim(verp, rcpt, message_id, code="550 5.1.1 <{rcpt}>: User unknown"):
    """Exim 4.9x: a multipart/report whose Status is a bare 5.0.0; the diagnostic holds the precise code."""
    code = code.format(rcpt=rcpt)
    return _crlf(f"""Return-path: <>
Envelope-to: {verp}
From: Mail Delivery System <Mailer-Daemon@mx1.shop.example>
To: {verp}
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1v0abc-000123-AB@mx1.shop.example>
X-Failed-Recipients: {rcpt}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary=1772442005-eximdsn-1804289383

--1772442005-eximdsn-1804289383
Content-type: text/plain; charset=us-ascii

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {rcpt}
    host mx.example.net [192.0.2.25]
    SMTP error from remote mail server after RCPT TO:<{rcpt}>:
    {code}

--1772442005-eximdsn-1804289383
Content-type: message/delivery-status

Reporting-MTA: dns; mx1.shop.example

Action: failed
Final-Recipient: rfc822;{rcpt}
Status: 5.0.0
Remote-MTA: dns; mx.example.net
Diagnostic-Code: smtp; {code}

--1772442005-eximdsn-1804289383
Content-type: message/rfc822

{_original(verp, rcpt, message_id)}
Hello

--1772442005-eximdsn-1804289383--
""")


def exim_plain(verp, rcpt, message_id, reason="550 5.2.2 Mailbox full: quota exceeded"):
    """Older Exim: no DSN at all, only text; the VERP token and the text must do."""
    return _crlf(f"""Return-path: <>
From: Mail Delivery System <Mailer-Daemon@mx1.shop.example>
To: {verp}
Subject: Mail delivery failed: returning message to sender
X-Failed-Recipients: {rcpt}
Auto-Submitted: auto-replied

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {rcpt}
    SMTP error from remote mail server after end of data:
    {reason}

------ This is a copy of the message, including all the headers. ------

{_original(verp, rcpt, message_id)}
Hello
""")


def exchange(verp, rcpt, message_id, status="5.1.10",
             diagnostic="550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"):
    return _crlf(f"""From: postmaster@outlook.example
To: {verp}
Date: Mon, 2 Mar 2026 09:00:07 +0000
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="2d0a6c8d-8c8c-4e47-9f2e-4b2b4a8b9a10"
X-MS-Exchange-Message-Is-Ndr:
Content-Language: en-US
Message-ID: <a1b2c3d4-ndr@AM0PR01MB1234.eurprd01.prod.outlook.example>
Subject: Undeliverable: Spring news
Auto-Submitted: auto-replied

--2d0a6c8d-8c8c-4e47-9f2e-4b2b4a8b9a10
Content-Type: text/plain; charset="us-ascii"

Your message to {rcpt} couldn't be delivered.
{rcpt.split('@')[0]} wasn't found at {rcpt.split('@')[1]}.

--2d0a6c8d-8c8c-4e47-9f2e-4b2b4a8b9a10
Content-Type: message/delivery-status

Reporting-MTA: dns;AM0PR01MB1234.eurprd01.prod.outlook.example
Received-From-MTA: dns;mail.shop.example
Arrival-Date: Mon, 2 Mar 2026 09:00:06 +0000

Final-Recipient: rfc822;{rcpt}
Action: failed
Status: {status}
Diagnostic-Code: smtp;{diagnostic}
X-Display-Name: {rcpt}

--2d0a6c8d-8c8c-4e47-9f2e-4b2b4a8b9a10
Content-Type: text/rfc822-headers

{_original(verp, rcpt, message_id)}
--2d0a6c8d-8c8c-4e47-9f2e-4b2b4a8b9a10--
""")


def gmail(verp, rcpt, message_id, action="failed", status="5.1.1",
          diagnostic="550-5.1.1 The email account that you tried to reach does not exist. Please try 550-5.1.1 "
                     "double-checking the recipient's email address for typos. 550 5.1.1 https://support.google.com/mail/?p=NoSuchUser"):
    return _crlf(f"""Return-Path: <>
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: {verp}
Auto-Submitted: auto-replied
Subject: Delivery Status Notification ({"Failure" if action == "failed" else "Delay"})
References: <{message_id}>
In-Reply-To: <{message_id}>
Message-ID: <65e2f1a5.050a0220.abcd.1234.GMR@mx.google.example>
Date: Mon, 02 Mar 2026 01:00:05 -0800 (PST)
MIME-Version: 1.0
Content-Type: multipart/report; boundary="000000000000a1b2c3"; report-type=delivery-status

--000000000000a1b2c3
Content-Type: multipart/related; boundary="000000000000a1b2c4"

--000000000000a1b2c4
Content-Type: multipart/alternative; boundary="000000000000a1b2c5"

--000000000000a1b2c5
Content-Type: text/plain; charset="UTF-8"

** Address not found **

Your message wasn't delivered to {rcpt} because the address couldn't be found.

--000000000000a1b2c5--

--000000000000a1b2c4--

--000000000000a1b2c3
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com
Arrival-Date: Mon, 02 Mar 2026 01:00:04 -0800 (PST)
X-Original-Message-ID: <{message_id}>

Final-Recipient: rfc822; {rcpt}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.example.net. (192.0.2.25, the server for the domain example.net.)
Diagnostic-Code: smtp; {diagnostic}
Last-Attempt-Date: Mon, 02 Mar 2026 01:00:05 -0800 (PST)

--000000000000a1b2c3
Content-Type: message/rfc822

{_original(verp, rcpt, message_id)}
Hello

--000000000000a1b2c3--
""")


def arf(verp, rcpt, message_id, redacted=False, feedback_type="abuse"):
    """An abuse report (RFC 5965 appendix B); redacted ones hide the recipient and the envelope sender."""
    rcpt_field = "" if redacted else f"Original-Rcpt-To: <{rcpt}>\n"
    mail_from = "" if redacted else f"Original-Mail-From: <{verp}>\n"
    shown_rcpt = "redacted@example.net" if redacted else rcpt
    return _crlf(f"""From: <abusedesk@example.net>
Date: Thu, 8 Mar 2026 14:00:00 EDT
Subject: FW: Spring news
To: <fbl@shop.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
     boundary="part1_13d.2e68ed54_boundary"

--part1_13d.2e68ed54_boundary
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP
192.0.2.1 on Thu, 8 Mar 2026 14:00:00 EDT.

--part1_13d.2e68ed54_boundary
Content-Type: message/feedback-report

Feedback-Type: {feedback_type}
User-Agent: SomeGenerator/1.0
Version: 1
{mail_from}{rcpt_field}Arrival-Date: Thu, 8 Mar 2026 14:00:00 EDT
Reported-Domain: shop.example
Source-IP: 192.0.2.1

--part1_13d.2e68ed54_boundary
Content-Type: message/rfc822
Content-Disposition: inline

From: <news@shop.example>
Received: from mail.shop.example (mail.shop.example [192.0.2.1]) by mx.example.net
To: {shown_rcpt}
Subject: Spring news
Date: Thu, 8 Mar 2026 09:00:00 EDT
Message-ID: <{message_id}>

Hello

--part1_13d.2e68ed54_boundary--
""")


def out_of_office(verp, rcpt):
    return _crlf(f"""From: {rcpt}
To: {verp}
Subject: Out of office
Auto-Submitted: auto-replied

I am away until Monday and will read your message when I am back.
""")
