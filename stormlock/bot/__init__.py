"""The Slack bot. Its listeners sit over a service layer that knows no Slack."""
