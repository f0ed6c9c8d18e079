// Package config loads a program's settings from, in rising order of
// precedence, defaults, a YAML file (--config or KREABUS_CONFIG), environment
// variables and command-line flags.
//
// A settings struct names each setting once, in tags:
//
//	type Config struct {
//		Listen string `env:"KREABUS_LISTEN" flag:"listen" usage:"webhook listen address"`
//		Secret string `env:"KREABUS_WEBHOOK_SECRET" flag:"webhook-secret" required:"true" secret:"true"`
//	}
//
// Defaults are not tags: a struct's defaults are the values its
// SetDefaults method (see Defaulter) gives a zero struct, which fills the
// zero fields from the package's Default* constants. Load starts from
// them, and Settings and Markdown report them.
//
// The YAML key is the flag name. Supported field types are string, bool, int,
// int64, float64 and time.Duration; struct fields (embedded or named) are
// walked so programs can group their settings.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// FileEnv names the environment variable that points at the YAML file.
const FileEnv = "KREABUS_CONFIG"

// ErrHelp is returned by Load when -h or --help was given.
var ErrHelp = flag.ErrHelp

// SettingError names the setting that is missing or malformed.
type SettingError struct {
	Env, Flag string
	Err       error
}

func (e *SettingError) Error() string {
	return fmt.Sprintf("setting %s (--%s): %v", e.Env, e.Flag, e.Err)
}

func (e *SettingError) Unwrap() error { return e.Err }

// ErrMissing is wrapped by the SettingError of a required setting left empty.
var ErrMissing = errors.New("required but not set")

// Defaulter is a settings struct with defaults: SetDefaults fills its zero
// fields from the Default* constants.
type Defaulter interface {
	SetDefaults()
}

// Setting describes one setting of a struct, for documentation. Default
// is the field's value when listed: Settings and Markdown apply the
// struct's defaults first.
type Setting struct {
	Env, Flag, Default, Usage string
	Required, Secret          bool
	field                     reflect.Value
}

// Settings lists the settings of the struct dst points to, after applying
// its defaults (when it is a Defaulter) to it.
func Settings(dst any) []Setting {
	if d, ok := dst.(Defaulter); ok {
		d.SetDefaults()
	}
	return fields(dst)
}

// fields lists the settings of the struct dst points to, as they are.
func fields(dst any) []Setting {
	v := reflect.ValueOf(dst)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		panic("config: Settings needs a pointer to a struct")
	}
	var out []Setting
	walk(v.Elem(), &out)
	return out
}

func walk(v reflect.Value, out *[]Setting) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := f.Tag.Get("flag")
		if name == "" && f.Type.Kind() == reflect.Struct && (f.Anonymous || f.IsExported()) {
			walk(v.Field(i), out)
			continue
		}
		if name == "" || !f.IsExported() {
			continue
		}
		if f.Tag.Get("default") != "" {
			panic("config: " + t.String() + "." + f.Name + ": defaults come from SetDefaults, not a default tag")
		}
		*out = append(*out, Setting{
			Env:      f.Tag.Get("env"),
			Flag:     name,
			Default:  format(v.Field(i)),
			Usage:    f.Tag.Get("usage"),
			Required: f.Tag.Get("required") == "true",
			Secret:   f.Tag.Get("secret") == "true",
			field:    v.Field(i),
		})
	}
}

// Load fills the struct dst points to: its defaults (when it is a
// Defaulter), then the YAML file, the environment and the flags. args are
// the command-line arguments without the program name; env looks up
// environment variables (os.LookupEnv when nil). The error names the
// setting at fault.
func Load(dst any, name string, args []string, env func(string) (string, bool)) error {
	if env == nil {
		env = os.LookupEnv
	}
	settings := Settings(dst)

	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	file := fs.String("config", "", "YAML configuration file (env "+FileEnv+")")
	flagged := make(map[string]*string, len(settings))
	for _, s := range settings {
		p := new(string)
		flagged[s.Flag] = p
		fs.Func(s.Flag, s.Usage, func(v string) error { *p = v; return nil })
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stderr)
			fs.PrintDefaults()
			return ErrHelp
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}

	path := *file
	if path == "" {
		path, _ = env(FileEnv)
	}
	if path != "" {
		if err := loadFile(path, settings); err != nil {
			return err
		}
	}
	for _, s := range settings {
		if s.Env == "" {
			continue
		}
		if v, ok := env(s.Env); ok {
			if err := set(s.field, v); err != nil {
				return &SettingError{s.Env, s.Flag, err}
			}
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, s := range settings {
		if set[s.Flag] {
			if err := setValue(s, *flagged[s.Flag]); err != nil {
				return err
			}
		}
	}
	for _, s := range settings {
		if s.Required && s.field.IsZero() {
			return &SettingError{s.Env, s.Flag, ErrMissing}
		}
	}
	return nil
}

func setValue(s Setting, v string) error {
	if err := set(s.field, v); err != nil {
		return &SettingError{s.Env, s.Flag, err}
	}
	return nil
}

func loadFile(path string, settings []Setting) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	byFlag := make(map[string]Setting, len(settings))
	for _, s := range settings {
		byFlag[s.Flag] = s
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s, ok := byFlag[k]
		if !ok {
			return fmt.Errorf("config file %s: unknown setting %q", path, k)
		}
		var v string
		switch x := m[k].(type) {
		case string:
			v = x
		case nil:
			continue
		case float64:
			v = strconv.FormatFloat(x, 'f', -1, 64)
		case bool:
			v = strconv.FormatBool(x)
		default:
			return &SettingError{s.Env, s.Flag, fmt.Errorf("config file %s: %q must be a scalar", path, k)}
		}
		if err := setValue(s, v); err != nil {
			return err
		}
	}
	return nil
}

var durationType = reflect.TypeOf(time.Duration(0))

// format writes a field's value as Load reads it: durations without
// trailing zero units ("168h", not "168h0m0s").
func format(f reflect.Value) string {
	if f.Type() == durationType {
		d := time.Duration(f.Int()).String()
		if strings.HasSuffix(d, "m0s") {
			d = strings.TrimSuffix(d, "0s")
		}
		if strings.HasSuffix(d, "h0m") {
			d = strings.TrimSuffix(d, "0m")
		}
		return d
	}
	switch f.Kind() {
	case reflect.String:
		return f.String()
	case reflect.Bool:
		return strconv.FormatBool(f.Bool())
	case reflect.Int, reflect.Int64:
		return strconv.FormatInt(f.Int(), 10)
	case reflect.Float64:
		return strconv.FormatFloat(f.Float(), 'f', -1, 64)
	}
	panic("config: unsupported field type " + f.Type().String())
}

func set(f reflect.Value, v string) error {
	if f.Type() == durationType {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("not a duration: %q", v)
		}
		f.SetInt(int64(d))
		return nil
	}
	switch f.Kind() {
	case reflect.String:
		f.SetString(v)
	case reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("not a boolean: %q", v)
		}
		f.SetBool(b)
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return fmt.Errorf("not an integer: %q", v)
		}
		f.SetInt(n)
	case reflect.Float64:
		n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return fmt.Errorf("not a number: %q", v)
		}
		f.SetFloat(n)
	default:
		panic("config: unsupported field type " + f.Type().String())
	}
	return nil
}

// Program names a settings struct for Markdown.
type Program struct {
	Name     string
	Settings any // pointer to a settings struct; its defaults are applied
}

// Markdown renders the settings of several programs as one Markdown table,
// for the README: a setting shared by programs is one row naming them all.
func Markdown(programs ...Program) string {
	type row struct {
		s        Setting
		users    []string
		defaults []string // "program: default", shown where programs differ
		differ   bool
	}
	var rows []*row
	byEnv := map[string]*row{}
	for _, p := range programs {
		for _, s := range Settings(p.Settings) {
			if r, ok := byEnv[s.Env]; ok {
				r.users = append(r.users, p.Name)
				r.defaults = append(r.defaults, p.Name+": `"+s.Default+"`")
				if s.Default != r.s.Default {
					r.differ = true
					r.s.Usage = strings.TrimSuffix(r.s.Usage, " on SIGTERM")
				}
				continue
			}
			r := &row{s: s, users: []string{p.Name}, defaults: []string{p.Name + ": `" + s.Default + "`"}}
			byEnv[s.Env] = r
			rows = append(rows, r)
		}
	}
	var b strings.Builder
	b.WriteString("| variable | flag / YAML key | used by | default | description |\n|---|---|---|---|---|\n")
	for _, r := range rows {
		def := "`" + r.s.Default + "`"
		switch {
		case r.s.Required:
			def = "required"
		case r.differ:
			def = strings.Join(r.defaults, ", ")
		case r.s.Default == "":
			def = "none"
		}
		fmt.Fprintf(&b, "| `%s` | `--%s` | %s | %s | %s |\n", r.s.Env, r.s.Flag, strings.Join(r.users, ", "), def, r.s.Usage)
	}
	return b.String()
}
