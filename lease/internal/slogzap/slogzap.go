// Package slogzap adapts the zap loggers that the etcd client and server
// require to a *slog.Logger, so that overlay has one log stream.
//
// Only entries at or above a minimum level are forwarded: etcd is chatty at
// info level and overlay logs the events that matter itself.
package slogzap

import (
	"context"
	"log/slog"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns a zap logger that forwards entries at or above min to l.
// A nil l gives a no-op logger.
func New(l *slog.Logger, min zapcore.Level) *zap.Logger {
	if l == nil {
		return zap.NewNop()
	}
	return zap.New(&core{l: l, min: min})
}

// core is a zapcore.Core writing to slog. It is immutable; With returns a
// new core, so it is safe for concurrent use.
type core struct {
	l     *slog.Logger
	min   zapcore.Level
	attrs []slog.Attr
}

var _ zapcore.Core = (*core)(nil)

func (c *core) Enabled(lvl zapcore.Level) bool { return lvl >= c.min }

func (c *core) With(fields []zapcore.Field) zapcore.Core {
	n := &core{l: c.l, min: c.min, attrs: append(append([]slog.Attr(nil), c.attrs...), toAttrs(fields)...)}
	return n
}

func (c *core) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *core) Write(e zapcore.Entry, fields []zapcore.Field) error {
	attrs := append(append([]slog.Attr(nil), c.attrs...), toAttrs(fields)...)
	if e.LoggerName != "" {
		attrs = append(attrs, slog.String("logger", e.LoggerName))
	}
	c.l.LogAttrs(context.Background(), level(e.Level), e.Message, attrs...)
	return nil
}

func (c *core) Sync() error { return nil }

func level(l zapcore.Level) slog.Level {
	switch {
	case l >= zapcore.ErrorLevel:
		return slog.LevelError
	case l >= zapcore.WarnLevel:
		return slog.LevelWarn
	case l >= zapcore.InfoLevel:
		return slog.LevelInfo
	}
	return slog.LevelDebug
}

func toAttrs(fields []zapcore.Field) []slog.Attr {
	if len(fields) == 0 {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	attrs := make([]slog.Attr, 0, len(enc.Fields))
	for _, f := range fields {
		if v, ok := enc.Fields[f.Key]; ok {
			attrs = append(attrs, slog.Any("etcd."+f.Key, v))
		}
	}
	return attrs
}
