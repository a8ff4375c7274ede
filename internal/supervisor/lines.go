package supervisor

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// maxLine bounds one logged line of child output; the rest of a longer line
// is dropped and the record marked truncated.
const maxLine = 16 << 10

// readLines calls emit for every line read from r until r fails or ends,
// without the line ending. A line longer than max bytes is cut to max bytes
// (truncated is then true) and the rest of it discarded, so memory stays
// bounded whatever the child writes. A last line without a newline is
// emitted too.
func readLines(r io.Reader, max int, emit func(line []byte, truncated bool)) {
	br := bufio.NewReaderSize(r, max)
	for {
		line, err := br.ReadSlice('\n')
		switch {
		case err == nil:
			emit(trimEOL(line), false)
		case errors.Is(err, bufio.ErrBufferFull):
			emit(line, true)
			if !skipLine(br) {
				return
			}
		default:
			if len(line) > 0 {
				emit(trimEOL(line), false)
			}
			return
		}
	}
}

// skipLine discards input up to and including the next newline. It reports
// false when the input ended or failed first.
func skipLine(br *bufio.Reader) bool {
	for {
		_, err := br.ReadSlice('\n')
		if err == nil {
			return true
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return false
		}
	}
}

func trimEOL(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}
