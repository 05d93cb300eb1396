"""Admin for templates and campaigns: editor, preview, test sends."""
