// Package cetest reads kreabus events the way CloudEvents consumers do,
// with the official CloudEvents Go SDK, for tests: an event that Decode
// accepts is one any CloudEvents receiver on NATS can take.
//
// The SDK's NATS and JetStream protocol bindings live in modules of their
// own; Message implements the same binary content mode on the SDK's
// binding interfaces: every header named ce-<attribute> is an attribute
// (an unknown one an extension), the body is the data.
package cetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/spec"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
)

// Prefix is the binary content mode's header prefix on NATS.
const Prefix = "ce-"

var specs = spec.WithPrefix(Prefix)

// Message is a NATS message as a CloudEvents binding.Message.
type Message struct {
	Header nats.Header
	Data   []byte
}

var (
	_ binding.Message               = (*Message)(nil)
	_ binding.MessageMetadataReader = (*Message)(nil)
)

func (m *Message) version() spec.Version {
	return specs.Version(m.Header.Get(specs.PrefixedSpecVersionName()))
}

// GetAttribute returns the attribute of kind and its header's value.
func (m *Message) GetAttribute(kind spec.Kind) (spec.Attribute, any) {
	v := m.version()
	if v == nil {
		return nil, nil
	}
	a := v.AttributeFromKind(kind)
	if a == nil {
		return nil, nil
	}
	if vals := m.Header[a.PrefixedName()]; len(vals) > 0 {
		return a, vals[0]
	}
	return a, nil
}

// GetExtension returns the value of the extension's header, if any.
func (m *Message) GetExtension(name string) any {
	if vals := m.Header[Prefix+strings.ToLower(name)]; len(vals) > 0 {
		return vals[0]
	}
	return nil
}

// ReadEncoding is binary when the message has a ce-specversion header.
func (m *Message) ReadEncoding() binding.Encoding {
	if m.Header.Get(specs.PrefixedSpecVersionName()) != "" {
		return binding.EncodingBinary
	}
	return binding.EncodingUnknown
}

// ReadStructured: kreabus events are never structured.
func (m *Message) ReadStructured(context.Context, binding.StructuredWriter) error {
	return binding.ErrNotStructured
}

// ReadBinary hands the ce- headers and the body to w (the SDK starts and
// ends w itself).
func (m *Message) ReadBinary(_ context.Context, w binding.BinaryWriter) error {
	v := m.version()
	if v == nil {
		return binding.ErrUnknownEncoding
	}
	for name, vals := range m.Header {
		if !strings.HasPrefix(strings.ToLower(name), Prefix) || len(vals) == 0 {
			continue
		}
		if len(vals) > 1 {
			return fmt.Errorf("header %s appears %d times", name, len(vals))
		}
		var err error
		if a := v.Attribute(name); a != nil {
			err = w.SetAttribute(a, vals[0])
		} else {
			err = w.SetExtension(strings.TrimPrefix(strings.ToLower(name), Prefix), vals[0])
		}
		if err != nil {
			return fmt.Errorf("header %s: %w", name, err)
		}
	}
	if len(m.Data) > 0 {
		return w.SetData(bytes.NewReader(m.Data))
	}
	return nil
}

// Finish does nothing: the message holds no resources.
func (m *Message) Finish(error) error { return nil }

// Decode reads a NATS message's headers and body as a CloudEvent with the
// SDK and validates it.
func Decode(h nats.Header, data []byte) (*event.Event, error) {
	m := &Message{Header: h, Data: data}
	if m.ReadEncoding() != binding.EncodingBinary {
		return nil, errors.New("not a CloudEvent in binary content mode: no ce-specversion header")
	}
	ev, err := binding.ToEvent(context.Background(), m)
	if err != nil {
		return nil, err
	}
	if err := ev.Validate(); err != nil {
		return nil, err
	}
	return ev, nil
}
