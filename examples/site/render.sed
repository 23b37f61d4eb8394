# A very small Markdown subset to HTML: headings, list items, links, emphasis, code and
# paragraphs (one per line of text).
s/&/\&amp;/g
s/</\&lt;/g
s/>/\&gt;/g
s/`\([^`]*\)`/<code>\1<\/code>/g
s/\*\*\([^*]*\)\*\*/<strong>\1<\/strong>/g
s/\*\([^*]*\)\*/<em>\1<\/em>/g
s/\[\([^]]*\)\](\([^)]*\))/<a href="\2">\1<\/a>/g
# Forget the substitutions above, so that each `t` below only sees its own line type.
t block
:block
s/^### \(.*\)/<h3>\1<\/h3>/
t
s/^## \(.*\)/<h2>\1<\/h2>/
t
s/^# \(.*\)/<h1>\1<\/h1>/
t
s/^- \(.*\)/<li>\1<\/li>/
t
/^$/d
s/.*/<p>&<\/p>/
