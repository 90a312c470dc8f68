/* html.h - Python's html.unescape (HTML5 character references), which CLIP's text clean-up
 * applies twice to every prompt. */
#ifndef LDM_TEXT_HTML_H
#define LDM_TEXT_HTML_H

#include "unicode.h"

typedef struct { const char *name, *value; } ltx_html_entity;   /* value: UTF-8 */
typedef struct { uint32_t from, to; } ltx_html_charref_fix;

/* Generated tables (html_entities.c). */
extern const ltx_html_entity ltx_html_entities[];
extern const size_t ltx_html_entity_count;
extern const ltx_html_charref_fix ltx_html_invalid_charrefs[];
extern const size_t ltx_html_invalid_charref_count;
extern const uint32_t ltx_html_invalid_codepoints[];
extern const size_t ltx_html_invalid_codepoint_count;

/* Appends html.unescape(in[0..n)) to out (same replacements, same longest-prefix rule for
 * legacy names without ';', same handling of invalid numeric references). */
ldm_status ltx_html_unescape(const uint32_t *in, size_t n, ltx_cpbuf *out);

#endif
