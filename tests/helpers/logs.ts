/**
 * The first control character in `text` that a terminal or a log reader could act on (C0, DEL,
 * C1, U+2028, U+2029), as its code point; undefined when there is none.
 */
export function rawControl(text: string): number | undefined {
  for (const char of text) {
    const code = char.codePointAt(0) ?? 0;
    if (code < 0x20 || (code >= 0x7f && code <= 0x9f) || code === 0x2028 || code === 0x2029) {
      return code;
    }
  }
  return undefined;
}
